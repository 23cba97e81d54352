"""Loading a reference implementation's source file from a local checkout (never part of this
repository): shared by the verify_*/time_* scripts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def import_source_file(checkout: Path, relative: str, module_name: str, repository: str) -> ModuleType:
    """Import ``checkout/relative`` alone, as ``module_name`` (a package __init__ may pull in
    dependencies the model file does not need); a clear exit when the checkout is not the right one."""
    path = Path(checkout) / relative
    if not path.is_file():
        raise SystemExit(f"{path} not found: --reference must be a checkout of {repository}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
