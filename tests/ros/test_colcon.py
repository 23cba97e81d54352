"""`colcon build` as a ROS user runs it, and the install tree `ros2 launch` / `ros2 run` read.

Needs colcon (``pip install colcon-core colcon-ros``) and ament_package (Debian's
``python3-ament-package``, or ``$AMENT_PACKAGE_PATH`` pointing at the folder holding it);
skipped otherwise. ``$COLCON`` names the colcon executable when it is not on PATH.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = "/usr/lib/python3/dist-packages"


def _colcon() -> str | None:
    return os.environ.get("COLCON") or shutil.which("colcon")


def _ament_path() -> str | None:
    for path in (os.environ.get("AMENT_PACKAGE_PATH"), DEBIAN_PYTHON):
        if path and (Path(path) / "ament_package").is_dir():
            return path
    try:
        import ament_package  # noqa: F401

        return ""
    except ImportError:
        return None


@pytest.mark.timeout(600)
def test_colcon_build_install_tree(tmp_path):
    colcon, ament = _colcon(), _ament_path()
    if colcon is None or ament is None:
        pytest.skip("colcon (colcon-core, colcon-ros) or ament_package not installed")
    workspace = tmp_path / "ws"
    (workspace / "src").mkdir(parents=True)
    # a source tree as a ROS user has it: the package's tracked files under src/
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if name.startswith(
            ("featmatch_core/", "lightglue_ros/", "launch/", "config/", "resource/")
        ) or name in ("setup.py", "setup.cfg", "package.xml", "LICENSE", "README.md"):
            target = workspace / "src" / "lightglue_ros" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
    env = dict(os.environ)
    if ament:  # only ament_package from that folder (Debian's also holds another setuptools)
        only = tmp_path / "ament_only"
        only.mkdir()
        (only / "ament_package").symlink_to(Path(ament) / "ament_package")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(only)) if p)
    result = subprocess.run(
        [colcon, "build", "--event-handlers", "console_direct+"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    install = workspace / "install" / "lightglue_ros"
    share = install / "share" / "lightglue_ros"
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "lightglue_ros").is_file()
    assert (share / "package.xml").is_file()
    assert sorted(p.name for p in (share / "launch").iterdir()) == [
        "matcher.launch.py",
        "stereo_matcher.launch.py",
    ]
    assert sorted(p.name for p in (share / "config").iterdir()) == ["matcher.yaml", "stereo_matcher.yaml"]
    for exe in ("matcher_node", "stereo_matcher_node"):  # where `ros2 run lightglue_ros <exe>` looks
        assert os.access(install / "lib" / "lightglue_ros" / exe, os.X_OK), exe
    site = list(install.glob("lib/python3*/site-packages"))
    assert site and (site[0] / "lightglue_ros" / "frame_matcher.py").is_file()
    assert (site[0] / "featmatch_core" / "configs" / "sift+nn.yaml").is_file()
    assert sys.version_info >= (3, 10)
