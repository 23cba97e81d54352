"""Line segment detectors (``lsd``): batched ``lines`` / ``line_scores`` / ``line_mask`` in
pixels of the original image (see the line contract in docs/architecture.md)."""
