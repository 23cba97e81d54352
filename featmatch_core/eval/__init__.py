"""Evaluation: metrics shared by the HPatches, MegaDepth-1500 and posed-sequence benchmarks.

``metrics`` holds the definitions (cumulative-error AUC, mAA, match precision against a
homography, epipolar geometry or ground-truth labels) and ``summarize`` to turn per-pair
results into one table. The geometry comes from ``featmatch_core.geometry`` and the robust
estimators from ``featmatch_core.estimators``; nothing is defined twice.
"""
