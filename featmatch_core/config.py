"""Configuration: strict merging of model defaults, named configs and CLI overrides.

Every model owns a ``default_conf`` dict. A user config is merged on top of it in
OmegaConf struct mode, so that a misspelt key raises instead of being ignored, and
values are checked against the type of their default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

ConfLike = Mapping[str, Any] | DictConfig | None


class ConfigError(ValueError):
    """A configuration names an unknown key or has a value of the wrong type."""


def _type_ok(default: Any, value: Any) -> bool:
    """Whether ``value`` may replace ``default`` (None defaults accept anything)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple, ListConfig)):
        return isinstance(value, (list, tuple, ListConfig))
    if isinstance(default, (dict, DictConfig)):
        return isinstance(value, (dict, DictConfig))
    return True


def _check_types(defaults: Mapping, conf: Mapping, owner: str, prefix: str = "") -> None:
    for key, default in defaults.items():
        if key not in conf:
            continue
        value = conf[key]
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            _check_types(default, value, owner, f"{prefix}{key}.")
        elif not _type_ok(default, value):
            raise ConfigError(
                f"{owner}: '{prefix}{key}' expects {type(default).__name__} "
                f"(default {default!r}), got {value!r} ({type(value).__name__})"
            )


def to_container(conf: ConfLike) -> dict:
    if conf is None:
        return {}
    if isinstance(conf, DictConfig):
        return OmegaConf.to_container(conf, resolve=True)  # type: ignore[return-value]
    return {k: (to_container(v) if isinstance(v, (Mapping, DictConfig)) else v) for k, v in conf.items()}


def merge_strict(defaults: Mapping[str, Any], *confs: ConfLike, owner: str = "config",
                 open_keys: Iterable[str] = ()) -> DictConfig:
    """Merge ``confs`` onto ``defaults``; unknown keys and wrong types raise ConfigError.

    ``open_keys`` names sub-dicts whose content is validated elsewhere (for example
    the ``extractor`` section of a pipeline, checked by the extractor itself).
    """
    base = OmegaConf.create(dict(defaults))
    OmegaConf.set_struct(base, True)
    for key in open_keys:
        if key in base and isinstance(base[key], DictConfig):
            OmegaConf.set_struct(base[key], False)
    plain_defaults = to_container(defaults)
    for conf in confs:
        plain = to_container(conf)
        _check_types(plain_defaults, plain, owner)
        try:
            base = OmegaConf.merge(base, plain)
        except ConfigKeyError as err:
            key = getattr(err, "full_key", None) or str(err)
            raise ConfigError(
                f"{owner}: unknown config key '{key}'. Valid keys: {sorted(plain_defaults)}"
            ) from None
    return base


def parse_dotlist(overrides: Sequence[str]) -> DictConfig:
    """Parse ``a.b=1`` style command-line overrides (OmegaConf dotlist syntax)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
    return OmegaConf.from_dotlist(list(overrides))


def named_config_dir() -> Path:
    return Path(str(resources.files("featmatch_core") / "configs"))


def list_named_configs() -> list[str]:
    return sorted(p.stem for p in named_config_dir().glob("*.yaml"))


def load_named_config(name_or_path: str | Path) -> DictConfig:
    """Load a named config shipped with the package (``sift+lightglue``) or a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = named_config_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no config named '{name_or_path}'. Named configs: {', '.join(list_named_configs())}; "
            "or pass the path of a .yaml file."
        )
    conf = OmegaConf.load(path)
    if not isinstance(conf, DictConfig):
        raise ConfigError(f"{path} does not contain a mapping")
    return conf


def load_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """A named config or YAML file with ``key=value`` overrides (full paths, ``model.matcher.x=1``)
    applied: what the command lines take."""
    conf = load_named_config(name_or_path)
    if overrides:
        conf = OmegaConf.merge(conf, parse_dotlist(overrides))
    return conf
