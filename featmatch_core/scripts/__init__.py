"""Data-preparation commands (``python -m featmatch_core.scripts.<name>``).

- :mod:`.export_megadepth`: cache the features of a frozen extractor on MegaDepth, one h5 file
  per scene, for training with ``data.load_features.do=true``.
"""
