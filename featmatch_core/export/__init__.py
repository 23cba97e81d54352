"""ONNX export of our models: ``python -m featmatch_core.export onnx --conf CONF --out model.onnx``.

Formats of the LightGlue matcher (:mod:`.lightglue_export`): ``colmap`` (COLMAP's LightGlue ONNX
matcher), ``opencv`` (``cv2.LightGlueMatcher``, ``LG_ALIKED`` layout) and ``full`` (adaptive depth
and width, run by ``model.matcher.backend=onnx``); extractors SuperPoint and DISK
(:mod:`.extractor_export`). Needs the ``onnx`` extra (onnx, onnxruntime).
"""

from .extractor_export import export_extractor
from .lightglue_export import FORMATS, export_lightglue
from .onnx_files import OnnxFileError

__all__ = ["FORMATS", "OnnxFileError", "export_extractor", "export_lightglue"]
