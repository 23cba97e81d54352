import pytest
from omegaconf import OmegaConf

from featmatch_core.config import (
    ConfigError,
    list_named_configs,
    load_named_config,
    merge_strict,
    parse_dotlist,
)
from featmatch_core.models import get_model
from featmatch_core.models.base import BaseModel

DEFAULTS = {"name": "toy", "radius": 4, "threshold": 0.5, "flag": False, "sub": {"a": 1}, "opt": None}


def test_merge_overrides_values():
    conf = merge_strict(DEFAULTS, {"radius": 2, "sub": {"a": 3}, "opt": "x"})
    assert conf.radius == 2 and conf.sub.a == 3 and conf.opt == "x" and conf.threshold == 0.5


def test_typo_raises_with_key_name():
    with pytest.raises(ConfigError, match="radiuss"):
        merge_strict(DEFAULTS, {"radiuss": 2}, owner="toy")


def test_nested_typo_raises():
    with pytest.raises(ConfigError, match="b"):
        merge_strict(DEFAULTS, {"sub": {"b": 2}})


@pytest.mark.parametrize("key,value", [("radius", "four"), ("radius", 2.5), ("flag", 1), ("threshold", "x")])
def test_wrong_type_raises(key, value):
    with pytest.raises(ConfigError, match=key):
        merge_strict(DEFAULTS, {key: value})


def test_int_accepted_for_float():
    assert merge_strict(DEFAULTS, {"threshold": 1}).threshold == 1


def test_dotlist_overrides_parse_and_reject_garbage():
    conf = parse_dotlist(["model.matcher.depth_confidence=0.9", "model.extractor.max_num_keypoints=512"])
    assert conf.model.matcher.depth_confidence == 0.9
    assert conf.model.extractor.max_num_keypoints == 512
    with pytest.raises(ConfigError, match="key=value"):
        parse_dotlist(["model.matcher"])


def test_named_configs_exist_and_name_registered_models():
    names = list_named_configs()
    for required in ["superpoint+lightglue", "sift+lightglue", "aliked+lightglue", "disk+lightglue",
                     "sift+nn", "superpoint+nn", "superpoint+superglue", "superpoint+lsd+gluestick", "loftr"]:
        assert required in names
    for name in names:
        conf = load_named_config(name)
        if "dense" in conf.model:  # detector-free: one model instead of extractor + matcher
            assert "extractor" not in conf.model and "matcher" not in conf.model
            assert get_model("dense", conf.model.dense.name)
            continue
        assert get_model("extractor", conf.model.extractor.name)
        assert get_model("matcher", conf.model.matcher.name)


def test_unknown_named_config_lists_choices():
    with pytest.raises(ConfigError, match="sift\\+nn"):
        load_named_config("nope+nothing")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="superpoint"):
        get_model("extractor", "superpont")


class _Toy(BaseModel):
    default_conf = {"features": None, "dim": 8, "layers": 2}
    preset_key = "features"
    presets = {"big": {"dim": 32, "layers": 4}}

    def _init(self, conf):
        pass


def test_presets_apply_but_user_values_win():
    assert _Toy({"features": "big"}).conf.dim == 32
    toy = _Toy({"features": "big", "dim": 8})  # explicit value equal to the default still wins
    assert toy.conf.dim == 8 and toy.conf.layers == 4
    with pytest.raises(ValueError, match="big"):
        _Toy({"features": "small"})


def test_model_conf_is_struct():
    toy = _Toy({})
    assert OmegaConf.is_struct(toy.conf)
    with pytest.raises(ConfigError):
        _Toy({"layer": 3})
