"""featmatch_core: learned local-feature matching without ROS.

    import featmatch_core
    pipe = featmatch_core.load("sift+lightglue")
    pred = pipe.match(featmatch_core.read_image("a.jpg"), featmatch_core.read_image("b.jpg"))
    print(pred.summary())
"""

from .config import ConfigError, list_named_configs, load_named_config
from .image import read_image, to_tensor_image
from .models import build_model, get_model
from .models.pipeline import FeatureStream, Frame, Pipeline, TwoViewMatches, load

__all__ = [
    "ConfigError",
    "FeatureStream",
    "Frame",
    "Pipeline",
    "TwoViewMatches",
    "build_model",
    "get_model",
    "list_named_configs",
    "load",
    "load_named_config",
    "read_image",
    "to_tensor_image",
]
__version__ = "0.1.0"
