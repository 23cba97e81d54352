"""Detector-free two-view matchers (LoFTR): both images in, matches out.

They have no per-image features, so they do not split into extractor + matcher: a model
section with ``dense: {name: ...}`` builds a :class:`~.two_view.DenseTwoView`, which offers
the batched ``forward`` and the single-pair ``match`` of a ``Pipeline`` (evaluation, ``match.py``),
and refuses per-image extraction (streaming, ROS nodes) with a clear error.
"""
