"""Image pairs to match: exhaustive, sequential with an overlap window, or read from a file.

A pairs file has one pair per line, ``name0 name1`` (hloc's format: retrieval or pose-prior
pairs written by hloc can be used as they are); blank lines and ``#`` comments are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_write_bytes

Pair = tuple[str, str]


def exhaustive_pairs(names: Sequence[str]) -> list[Pair]:
    """Every unordered pair once, in the order of ``names``."""
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def sequential_pairs(names: Sequence[str], window: int = 10) -> list[Pair]:
    """Each image with the ``window`` images that follow it (video frames in order)."""
    if window < 1:
        raise ValueError(f"the sequential window must be at least 1, got {window}")
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, min(i + 1 + window, len(names)))]


def read_pairs(path: str | Path, known_names: Sequence[str] | None = None) -> list[Pair]:
    """Pairs of a file; with ``known_names``, a pair naming another image is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pairs file at {path}")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path}:{number}: expected 'name0 name1', got '{line}'")
        pairs.append((parts[0], parts[1]))
    if known_names is not None:
        known = set(known_names)
        missing = sorted({n for pair in pairs for n in pair if n not in known})
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ValueError(f"{path} names {len(missing)} image(s) that are not among the images: {shown}")
    return pairs


def write_pairs(path: str | Path, pairs: Sequence[Pair]) -> Path:
    return atomic_write_bytes(path, "".join(f"{a} {b}\n" for a, b in pairs).encode())


def pairs_from_spec(spec: str, names: Sequence[str]) -> list[Pair]:
    """``exhaustive``, ``sequential[:WINDOW]`` (default 10) or the path of a pairs file."""
    if spec == "exhaustive":
        return exhaustive_pairs(names)
    if spec == "sequential" or spec.startswith("sequential:"):
        window = spec.partition(":")[2] or "10"
        if not window.isdigit():
            raise ValueError(f"bad pairs spec '{spec}': the window must be an integer, e.g. sequential:10")
        return sequential_pairs(names, int(window))
    if Path(spec).is_file():
        return read_pairs(spec, names)
    raise ValueError(f"bad pairs spec '{spec}': use exhaustive, sequential:WINDOW or the path of a pairs file")
