"""The parameter schema, config/*.yaml and the packaging files agree with each other."""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from lightglue_ros import params as P

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("node", P.NODES)
def test_yaml_files_match_the_declared_parameters(node):
    path = ROOT / "config" / P.CONFIG_FILES[node]
    assert path.read_text() == P.to_yaml(node), "run: python -m lightglue_ros.params --write"
    data = yaml.safe_load(path.read_text())
    assert set(data) == {"/**"}
    values = data["/**"]["ros__parameters"]
    assert list(values) == [p.name for p in P.params_for(node)]
    assert P.read_yaml(path, node) == P.defaults(node)
    for p in P.params_for(node):
        assert type(values[p.name]) is p.type, p.name  # ROS infers the parameter type from YAML
        assert p.check(p.default) is None


def test_check_command(tmp_path):
    assert P.main(["--check"]) == 0
    assert P.main(["--write", "--dir", str(tmp_path)]) == 0
    (tmp_path / "matcher.yaml").write_text("/**:\n  ros__parameters:\n    max_keypoints: 10\n")
    assert P.main(["--check", "--dir", str(tmp_path)]) == 1


def test_validation_and_runtime_rules():
    with pytest.raises(P.ParamError, match="unknown parameter 'max_keypoint'"):
        P.validate("matcher", {"max_keypoint": 100})
    with pytest.raises(P.ParamError, match=r"\[16, 16384\]"):
        P.validate("matcher", {"max_keypoints": 5})
    with pytest.raises(P.ParamError, match="one of"):
        P.validate("matcher", {"device": "tpu"})
    with pytest.raises(P.ParamError, match="must be a int"):
        P.validate("matcher", {"max_keypoints": True})
    assert P.validate("matcher", {"ransac_threshold": 2})["ransac_threshold"] == 2.0  # int accepted for float
    assert P.runtime_change_error("matcher", "ransac_threshold", 3.0) is None
    assert "start-up" in P.runtime_change_error("matcher", "extractor", "superpoint")
    assert "stereo" not in [p.name for p in P.params_for("matcher")]
    assert {"slop" in p.name for p in P.params_for("stereo_matcher")} == {True, False}
    model = {p.name for p in P.SCHEMA if not p.runtime}
    assert {"extractor", "matcher", "max_keypoints", "device", "precision", "resize", "qos"} <= model
    runtime = {p.name for p in P.SCHEMA if p.runtime}
    assert {
        "ransac_threshold",
        "filter_threshold",
        "depth_confidence",
        "width_confidence",
        "min_matches",
        "keyframe_policy",
    } <= runtime
    assert P.parse_assignments(["a=2", "b=x", "c=true"]) == {"a": 2, "b": "x", "c": True}
    # min_layers: >= 1, or MODEL_VALUE (-2) outside the range; ROS is told a range that admits -2
    schema = {p.name: p for p in P.SCHEMA}
    assert schema["min_layers"].declared_range() == (-2, 64)
    assert schema["depth_confidence"].declared_range() == (-2.0, 1.0)
    assert schema["device"].declared_range() is None
    assert P.validate("matcher", {"min_layers": -2})["min_layers"] == -2
    assert P.validate("matcher", {"min_layers": 1})["min_layers"] == 1
    for bad in (0, -1):
        with pytest.raises(P.ParamError, match=r"'min_layers' must be in \[1, 64\]"):
            P.validate("matcher", {"min_layers": bad})
    # max_layers: the same shape; its default keeps the config's (no bound)
    assert schema["max_layers"].declared_range() == (-2, 64)
    assert P.validate("matcher", {})["max_layers"] == -2
    with pytest.raises(P.ParamError, match=r"'max_layers' must be in \[1, 64\]"):
        P.validate("matcher", {"max_layers": 0})
    with pytest.raises(P.ParamError, match=r"'max_layers' must be a int"):
        P.validate("matcher", {"max_layers": 4.5})


def test_model_overrides_build_the_pipeline():
    values = P.validate(
        "matcher", {"matcher": "lightglue", "resize": 0, "model_overrides": "matcher.weights=null"}
    )
    assert P.pipeline_name(values) == "sift+lightglue"
    assert P.pipeline_name({**values, "extractor": "superpoint", "matcher": "gluestick"}) == "superpoint+lsd+gluestick"
    overrides = P.model_overrides(values)
    assert "extractor.resize=null" in overrides and overrides[-1] == "matcher.weights=null"
    # thresholds at MODEL_VALUE (the default) leave the model config's calibrated values alone
    assert not any("confidence" in o or "filter_threshold" in o for o in overrides)
    explicit = P.model_overrides({**values, "filter_threshold": 0.3, "depth_confidence": -1.0})
    assert "matcher.filter_threshold=0.3" in explicit and "matcher.depth_confidence=-1.0" in explicit
    assert not any("width_confidence" in o for o in explicit)
    # min_layers defaults to the real-time 3; -2 keeps the config's schedule
    assert "matcher.min_layers=3" in overrides
    assert not any("min_layers" in o for o in P.model_overrides({**values, "min_layers": -2}))
    assert not any("max_layers" in o for o in overrides)
    assert "matcher.max_layers=4" in P.model_overrides({**values, "max_layers": 4})


# ---- packaging: package.xml, setup.py data_files and entry points --------------------------------
def _setup_call():
    tree = ast.parse((ROOT / "setup.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    return {kw.arg: kw.value for kw in calls[0].keywords}


def test_package_xml_setup_py_and_files_are_consistent():
    xml = ET.parse(ROOT / "package.xml").getroot()
    name = xml.findtext("name")
    assert name == "lightglue_ros"
    assert ast.unparse(_setup_call()["name"]) == "PACKAGE"  # ament_python: setup name == package name
    assert xml.findtext("export/build_type") == "ament_python"
    setup_text = (ROOT / "setup.py").read_text()
    assert re.search(r'PACKAGE = "lightglue_ros"', setup_text)
    version = re.search(r'version="([^"]+)"', setup_text).group(1)
    assert xml.findtext("version") == version
    # the ament index marker and the installed data
    assert (ROOT / "resource" / name).is_file()
    for needed in ("launch/*.launch.py", "config/*.yaml", "package.xml", "resource/{PACKAGE}"):
        assert needed.split("/")[0] in setup_text
    assert sorted(p.name for p in (ROOT / "launch").glob("*.launch.py")) == [
        "matcher.launch.py",
        "stereo_matcher.launch.py",
    ]
    assert sorted(p.name for p in (ROOT / "config").glob("*.yaml")) == sorted(P.CONFIG_FILES.values())
    # every console script points at an existing main(); each node has one
    entries = re.findall(r'"(\w+) = ([\w.]+):(\w+)"', setup_text)
    assert {e[0] for e in entries} >= {"matcher_node", "stereo_matcher_node"}
    for _script, module, func in entries:
        path = ROOT / (module.replace(".", "/") + ".py")
        assert path.is_file(), module
        functions = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert func in functions, (module, func)
    # setup.cfg installs the executables where `ros2 run` looks
    cfg = (ROOT / "setup.cfg").read_text()
    assert "$base/lib/lightglue_ros" in cfg
    # exec_depend covers what the nodes import
    deps = {d.text for d in xml.findall("exec_depend")}
    for module in ("matcher_node", "stereo_matcher_node"):
        text = (ROOT / "lightglue_ros" / f"{module}.py").read_text()
        imported = set(re.findall(r"^\s*(?:from|import) (\w+)", text, re.M))
        ros_pkgs = {
            m
            for m in imported
            if m.endswith("_msgs")
            or m in {"rclpy", "tf2_ros", "message_filters", "cv_bridge", "rcl_interfaces"}
        }
        assert ros_pkgs <= deps, ros_pkgs - deps
    launch_deps = set()
    for launch in (ROOT / "launch").glob("*.launch.py"):
        launch_deps |= set(re.findall(r"^\s*(?:from|import) (\w+)", launch.read_text(), re.M))
    assert launch_deps - {"os", "__future__"} <= deps
