"""ONNX export of LightGlue and the onnxruntime backend: the exported files give PyTorch's matches.

Two models: the bundled ``sift_lightglue_cpu`` weights, and random weights in the official
SuperPoint layout (written as a release-layout file and loaded like a download), whose
confidence and matchability heads are sharpened so that adaptive depth and width really act.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from featmatch_core.config import ConfigError, load_named_config, to_container  # noqa: E402
from featmatch_core.export import OnnxFileError, export_lightglue  # noqa: E402
from featmatch_core.export.__main__ import main as export_main  # noqa: E402
from featmatch_core.models.matchers.lightglue import LightGlue, to_release_layout  # noqa: E402
from featmatch_core.models.matchers.onnx_runtime import OnnxLightGlue  # noqa: E402
from featmatch_core.models.pipeline import Pipeline, build_matcher  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(180)]
Feats = dict[str, torch.Tensor]
SCORE_TOLERANCE = 1e-4


def features(n: int, dim: int, scale_ori: bool, seed: int) -> Feats:
    g = torch.Generator().manual_seed(seed)
    feats = {
        "keypoints": torch.rand(1, n, 2, generator=g) * torch.tensor([640.0, 480.0]),
        # positive descriptors like RootSIFT's, unit norm
        "descriptors": torch.nn.functional.normalize(torch.rand(1, n, dim, generator=g) ** 2, dim=-1),
        "image_size": torch.tensor([[640.0, 480.0]]),
    }
    if scale_ori:
        feats["scales"] = torch.rand(1, n, generator=g) * 4 + 1
        feats["oris"] = (torch.rand(1, n, generator=g) - 0.5) * 6
    return feats


def overlapping_pair(dim: int, scale_ori: bool, n0: int = 160, shared: int = 100, n1: int = 140,
                     seed: int = 0) -> dict[str, Feats]:
    """Image 1 = ``shared`` points of image 0 (shuffled, 0.5 px noise) plus points of its own, so
    that there are matches and unmatchable points for pruning."""
    feats0 = features(n0, dim, scale_ori, seed)
    own = features(n1 - shared, dim, scale_ori, seed + 1)
    picked = torch.randperm(n0, generator=torch.Generator().manual_seed(seed + 2))[:shared]
    feats1 = {k: v if k == "image_size" else torch.cat([v[:, picked], own[k]], 1) for k, v in feats0.items()}
    noise = torch.randn(feats1["keypoints"].shape, generator=torch.Generator().manual_seed(seed + 3))
    feats1["keypoints"] = feats1["keypoints"] + 0.5 * noise
    return {"image0": feats0, "image1": feats1}


def bundled_conf() -> dict:
    return to_container(load_named_config("sift+lightglue-cpu").model.matcher)


@pytest.fixture(scope="module")
def random_superpoint_file(tmp_path_factory):
    """Random SuperPoint-LightGlue weights in the released key layout, the confidence heads and
    the matchability of the pruning layers sharpened so that their outputs spread over (0, 1)
    instead of sitting near 0.5 (then the exit and the pruning rules fire)."""
    torch.manual_seed(0)
    model = LightGlue({"features": "superpoint", "weights": None})
    with torch.no_grad():
        for head in model.token_confidence:
            head.token[0].weight.mul_(30)
        for head in model.log_assignment[:-1]:
            head.matchability.weight.mul_(10)
    path = tmp_path_factory.mktemp("weights") / "superpoint_lightglue_random.pth"
    torch.save(to_release_layout(model.state_dict()), path)
    return path


@pytest.fixture(scope="module")
def models(random_superpoint_file):
    """name -> (config, PyTorch model, example pair)."""
    sift = bundled_conf()
    # random weights give low match probabilities: keep every mutual nearest neighbour
    superpoint = {"name": "lightglue", "features": "superpoint", "weights": str(random_superpoint_file),
                  "filter_threshold": 0.0}
    return {
        "sift_lightglue_cpu": (sift, LightGlue.from_pretrained(sift).eval(), overlapping_pair(128, True)),
        "superpoint_random": (superpoint, LightGlue.from_pretrained(superpoint).eval(), overlapping_pair(256, False)),
    }


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    """(model name, format) -> exported file, each written once for the module."""
    root = tmp_path_factory.mktemp("onnx")
    files = {}
    for name, (_, model, _) in models.items():
        for fmt in ("colmap", "full") + (("opencv",) if not model.conf.add_scale_ori else ()):
            files[name, fmt] = export_lightglue(model, root / f"{name}_{fmt}.onnx", fmt)
    return files


def torch_run(model: LightGlue, data: dict[str, Feats], **conf) -> dict:
    saved = {k: model.conf[k] for k in conf}
    model.conf.update(conf)
    try:
        with torch.inference_mode():
            return model(data)
    finally:
        model.conf.update(saved)


def onnx_matcher(conf: dict, path, **overrides) -> OnnxLightGlue:
    return OnnxLightGlue({**conf, "weights": None, "onnx_file": str(path), **overrides})


def assert_same_matches(expected: dict, actual: dict) -> None:
    assert torch.equal(expected["matches0"], actual["matches0"])
    assert torch.equal(expected["matches1"], actual["matches1"])
    matched = expected["matches0"] >= 0
    assert matched.sum() > 20  # the pair has matches to compare
    delta = (expected["matching_scores0"] - actual["matching_scores0"]).abs().max()
    assert delta < SCORE_TOLERANCE
    assert len(actual["matches"]) == 1 and torch.equal(expected["matches"][0], actual["matches"][0])


FIXED = {"depth_confidence": -1, "width_confidence": -1}


# ---- colmap ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sift_lightglue_cpu", "superpoint_random"])
def test_colmap_file_has_colmaps_layout_and_gives_torchs_matches(name, models, exports):
    conf, model, data = models[name]
    session = ort.InferenceSession(str(exports[name, "colmap"]), providers=["CPUExecutionProvider"])
    inputs = [(i.name, len(i.shape), i.type) for i in session.get_inputs()]
    expected = [("kpts0", 3, "tensor(float)"), ("kpts1", 3, "tensor(float)"), ("desc0", 3, "tensor(float)"),
                ("desc1", 3, "tensor(float)"), ("image_size0", 2, "tensor(float)"), ("image_size1", 2, "tensor(float)")]
    if model.conf.add_scale_ori:  # COLMAP's 10-input SIFT layout
        expected += [(n, 2, "tensor(float)") for n in ("scales0", "scales1", "oris0", "oris1")]
    assert inputs == expected
    assert [(o.name, len(o.shape), o.type) for o in session.get_outputs()] == [
        ("matches0", 1, "tensor(int64)"), ("mscores0", 1, "tensor(float)")]

    # run as COLMAP does: pixels (top-left pixel centre at 0) and (W, H), other counts than traced
    names = {"kpts": "keypoints", "desc": "descriptors", "image_size": "image_size", "scales": "scales", "oris": "oris"}
    feeds = {f"{short}{side}": data[f"image{side}"][key].numpy() for side in (0, 1) for short, key in names.items()
             if key in data[f"image{side}"]}
    matches0, mscores0 = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    reference = torch_run(model, data, **FIXED)
    np.testing.assert_array_equal(matches0, reference["matches0"][0].numpy())
    assert np.abs(mscores0 - reference["matching_scores0"][0].numpy()).max() < SCORE_TOLERANCE
    assert (matches0 >= 0).sum() > 20

    assert_same_matches(reference, onnx_matcher(conf, exports[name, "colmap"], **FIXED)(data))


# ---- full: adaptive depth and width ---------------------------------------------------------------
ADAPTIVE = {
    "off": FIXED,
    "depth": {"depth_confidence": 0.5, "width_confidence": -1},
    "width": {"depth_confidence": -1, "width_confidence": 0.99},
    "both": {"depth_confidence": 0.95, "width_confidence": 0.99},
}


@pytest.mark.parametrize("name", ["sift_lightglue_cpu", "superpoint_random"])
@pytest.mark.parametrize("setting", list(ADAPTIVE))
def test_full_file_keeps_adaptivity_and_gives_torchs_matches(name, setting, models, exports):
    conf, model, data = models[name]
    reference = torch_run(model, data, **ADAPTIVE[setting])
    actual = onnx_matcher(conf, exports[name, "full"], **ADAPTIVE[setting])(data)
    assert_same_matches(reference, actual)
    assert actual["stop"] == reference["stop"]
    for key in ("prune0", "prune1", "num_pruned0", "num_pruned1"):
        assert torch.equal(actual[key], reference[key]), key
    n_layers = int(model.conf.n_layers)
    pruned = int(reference["num_pruned0"] + reference["num_pruned1"])
    if setting in ("depth",):
        assert reference["stop"] < n_layers  # the exit really happened
    if setting in ("width",):
        assert pruned > 0  # points really were pruned
    if setting == "off":
        assert reference["stop"] == n_layers and pruned == 0


def test_full_file_follows_min_layers_and_the_threshold_schedule(models, exports):
    conf, model, data = models["sift_lightglue_cpu"]
    stops = set()
    for schedule in ({"min_layers": 3, "confidence_thresholds": [0.0] * 5},
                     {"min_layers": 1, "confidence_thresholds": [1.0, 1.0, 1.0, 0.0, 1.0]}):
        setting = {"depth_confidence": 0.5, "width_confidence": 0.99, **schedule}
        reference = torch_run(model, data, **setting)
        actual = onnx_matcher(conf, exports["sift_lightglue_cpu", "full"], **setting)(data)
        assert_same_matches(reference, actual)
        assert actual["stop"] == reference["stop"]
        stops.add(reference["stop"])
    assert stops == {3, 4}  # every point is sure after layer 3 in the first, after 4 in the second


def test_full_file_follows_max_layers_and_exit_filter_factors(models, exports):
    conf, model, data = models["sift_lightglue_cpu"]
    for setting in ({**FIXED, "max_layers": 2}, {"depth_confidence": 0.5, "width_confidence": 0.99,
                                                 "min_layers": 1, "max_layers": 3},
                    {**FIXED, "max_layers": 3, "exit_filter_factors": [1.0, 1.0, 0.25, 1.0, 1.0]}):
        reference = torch_run(model, data, **setting)
        actual = onnx_matcher(conf, exports["sift_lightglue_cpu", "full"], **setting)(data)
        assert_same_matches(reference, actual)
        assert actual["stop"] == reference["stop"] <= setting["max_layers"]


def test_full_runner_reads_thresholds_at_run_time(models, exports):
    """The ROS node changes matcher.conf at run time: the runner follows, without a new export."""
    conf, model, data = models["sift_lightglue_cpu"]
    matcher = onnx_matcher(conf, exports["sift_lightglue_cpu", "full"], **FIXED)
    matcher.conf.filter_threshold = 0.9
    assert_same_matches(torch_run(model, data, filter_threshold=0.9, **FIXED), matcher(data))


# ---- opencv ---------------------------------------------------------------------------------------
def test_opencv_file_has_the_lg_aliked_layout(models, exports):
    conf, model, data = models["superpoint_random"]
    path = exports["superpoint_random", "opencv"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["kpts0", "kpts1", "desc0", "desc1"]
    assert [(o.name, len(o.shape)) for o in session.get_outputs()] == [("matches0", 2), ("mscores0", 1)]
    reference = torch_run(model, data, **FIXED)
    actual = onnx_matcher(conf, path, **FIXED)(data)  # the backend normalises like LG_NORM_MAX_SIDE
    assert torch.equal(reference["matches0"], actual["matches0"])
    matched = reference["matches0"] >= 0
    delta = (reference["matching_scores0"][matched] - actual["matching_scores0"][matched]).abs().max()
    assert delta < SCORE_TOLERANCE


def test_opencv_file_runs_in_cv2_lightglue_matcher(models, exports):
    """OpenCV 5's own client, LG_ALIKED variant, normalising pixels like us (LG_NORM_MAX_SIDE)."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "LightGlueMatcher") or not hasattr(cv2, "LG_NORM_MAX_SIDE"):
        pytest.skip("this OpenCV has no cv2.LightGlueMatcher with LG_NORM_MAX_SIDE (OpenCV >= 5.1)")
    _, model, data = models["superpoint_random"]
    matcher = cv2.LightGlueMatcher.create(str(exports["superpoint_random", "opencv"]), 0.0, 0, 0, cv2.LG_ALIKED)
    matcher.setKeypointNormalization(cv2.LG_NORM_MAX_SIDE)
    (w, h), inputs = data["image0"]["image_size"][0].int().tolist(), {}
    for side in (0, 1):
        inputs[side] = (data[f"image{side}"]["keypoints"][0].numpy(), data[f"image{side}"]["descriptors"][0].numpy())
    matcher.setPairInfo(inputs[0][0], inputs[1][0], (w, h), (w, h))
    found = matcher.match(inputs[0][1], inputs[1][1])
    reference = torch_run(model, data, **FIXED)
    np.testing.assert_array_equal(np.array([(m.queryIdx, m.trainIdx) for m in found]), reference["matches"][0].numpy())
    scores = np.array([1 - m.distance for m in found])  # OpenCV's distance is 1 - score
    assert np.abs(scores - reference["scores"][0].numpy()).max() < SCORE_TOLERANCE


def test_opencv_format_refuses_sift(models, tmp_path):
    _, model, _ = models["sift_lightglue_cpu"]
    with pytest.raises(ValueError, match="no scale/orientation inputs.*SIFT"):
        export_lightglue(model, tmp_path / "sift.onnx", "opencv")
    assert not list(tmp_path.iterdir())


# ---- the backend in the pipeline --------------------------------------------------------------------
def test_pipeline_backend_onnx_exports_once_and_matches_like_torch(models, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMATCH_CACHE_DIR", str(tmp_path))
    conf = load_named_config("sift+lightglue-cpu").model
    torch_pipe = Pipeline.from_conf(conf)
    conf.matcher.backend = "onnx"
    onnx_pipe = Pipeline.from_conf(conf)
    assert isinstance(onnx_pipe.matcher, OnnxLightGlue) and onnx_pipe.conf.matcher.backend == "onnx"
    data = models["sift_lightglue_cpu"][2]
    expected = torch_pipe.match_features(data["image0"], data["image1"])
    actual = onnx_pipe.match_features(data["image0"], data["image1"])
    np.testing.assert_array_equal(expected.matches, actual.matches)
    assert np.abs(expected.scores - actual.scores).max() < SCORE_TOLERANCE
    assert expected.info == actual.info  # layers run, points pruned
    cached = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and "full" in cached[0].name
    Pipeline.from_conf(conf).match_features(data["image0"], data["image1"])  # the cached file again
    assert list((tmp_path / "onnx").glob("*.onnx")) == cached


def test_backend_batches_with_padding(models, exports):
    conf, model, data = models["sift_lightglue_cpu"]
    other = overlapping_pair(128, True, n0=120, shared=80, n1=140, seed=7)

    def padded(side: str) -> Feats:
        a, b = data[side], other[side]
        n = max(a["keypoints"].shape[1], b["keypoints"].shape[1])
        out = {"image_size": torch.cat([a["image_size"], b["image_size"]])}
        for key in ("keypoints", "descriptors", "scales", "oris"):
            rows = [torch.nn.functional.pad(f[key], (0, 0) * (f[key].ndim - 2) + (0, n - f[key].shape[1]))
                    for f in (a, b)]
            out[key] = torch.cat(rows)
        out["keypoint_mask"] = torch.stack([torch.arange(n) < f["keypoints"].shape[1] for f in (a, b)])
        return out

    batch = onnx_matcher(conf, exports["sift_lightglue_cpu", "full"], **ADAPTIVE["both"])(
        {"image0": padded("image0"), "image1": padded("image1")})
    for index, pair in enumerate((data, other)):
        single = torch_run(model, pair, **ADAPTIVE["both"])
        m, n = single["matches0"].shape[1], single["matches1"].shape[1]
        assert torch.equal(batch["matches0"][index, :m], single["matches0"][0])
        assert (batch["matches0"][index, m:] == -1).all() and (batch["matches1"][index, n:] == -1).all()
        assert torch.equal(batch["matches"][index], single["matches"][0])


def test_backend_without_keypoints_and_with_bad_features(models, exports):
    conf, _, data = models["sift_lightglue_cpu"]
    matcher = onnx_matcher(conf, exports["sift_lightglue_cpu", "full"])
    empty = {k: v[:, :0] if k != "image_size" else v for k, v in data["image1"].items()}
    out = matcher({"image0": data["image0"], "image1": empty})
    assert out["matches0"].shape == (1, 160) and (out["matches0"] == -1).all() and out["matches"][0].shape == (0, 2)
    with pytest.raises(ValueError, match="descriptors have dimension 64, expected 128"):
        matcher({"image0": data["image0"], "image1": {**data["image1"], "descriptors": torch.zeros(1, 140, 64)}})


# ---- bad input ----------------------------------------------------------------------------------------
def test_truncated_and_non_onnx_files_name_the_file(exports, tmp_path):
    conf = bundled_conf()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exports["sift_lightglue_cpu", "colmap"].read_bytes()[:5000])
    with pytest.raises(OnnxFileError, match=f"{truncated} is not a readable ONNX file"):
        onnx_matcher(conf, truncated, **FIXED)
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n" * 50)
    with pytest.raises(OnnxFileError, match=f"{text} (is not a readable ONNX file|holds no ONNX graph)"):
        onnx_matcher(conf, text, **FIXED)
    with pytest.raises(OnnxFileError, match="does not exist"):
        onnx_matcher(conf, tmp_path / "missing.onnx", **FIXED)


def test_file_with_other_inputs_is_refused(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["image"], ["matches0"])], "other",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, None, None])],
        [onnx.helper.make_tensor_value_info("matches0", onnx.TensorProto.FLOAT, [1, 3, None, None])])
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    with pytest.raises(OnnxFileError, match=r"other.onnx is not a LightGlue 'opencv' ONNX file.*"
                                            r"inputs \['image float\[1, 3, \?, \?\]'\], expected \['kpts0'"):
        onnx_matcher({"name": "lightglue", "features": "superpoint"}, path, **FIXED)


def test_file_for_another_model_or_setting_is_refused(models, exports):
    superpoint = {"name": "lightglue", "features": "superpoint"}
    with pytest.raises(OnnxFileError, match="exported with input_dim 128 \\(config: 256\\)"):
        onnx_matcher(superpoint, exports["sift_lightglue_cpu", "full"])
    with pytest.raises(OnnxFileError, match="every layer on every point.*export --format full"):
        onnx_matcher(bundled_conf(), exports["sift_lightglue_cpu", "colmap"])  # adaptivity on by default
    with pytest.raises(OnnxFileError, match="every layer\\) but the config sets max_layers=3"):
        onnx_matcher(bundled_conf(), exports["sift_lightglue_cpu", "colmap"], max_layers=3, **FIXED)
    with pytest.raises(OnnxFileError, match="filter_threshold 0.2 \\(config: 0.3\\)"):
        onnx_matcher(bundled_conf(), exports["sift_lightglue_cpu", "colmap"], filter_threshold=0.3, **FIXED)
    with pytest.raises(OnnxFileError, match="is a 'colmap' export, the config asks for onnx_format=full"):
        onnx_matcher(bundled_conf(), exports["sift_lightglue_cpu", "colmap"], onnx_format="full", **FIXED)


def test_backend_config_errors():
    with pytest.raises(ConfigError, match="backend 'tensorrt' is not available"):
        build_matcher({"name": "lightglue", "backend": "tensorrt"}, pretrained=False)
    with pytest.raises(ConfigError, match="backend 'onnx' is not available for matcher 'nearest_neighbor'"):
        build_matcher({"name": "nearest_neighbor", "backend": "onnx"}, pretrained=False)
    with pytest.raises(ValueError, match="onnx_format must be one of"):
        OnnxLightGlue({"features": "superpoint", "weights": None, "onnx_format": "tflite"})
    with pytest.raises(ConfigError, match="unknown config key 'onnx_fle'"):
        OnnxLightGlue({"features": "superpoint", "weights": None, "onnx_fle": "x.onnx"})


# ---- command line -------------------------------------------------------------------------------------
def test_cli_writes_a_complete_file_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "sift_lg.onnx"
    assert export_main(["onnx", "--conf", "sift+lightglue-cpu", "--out", str(out), "--format", "colmap",
                        "model.matcher.filter_threshold=0.2"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["sift_lg.onnx"]  # no temporary file left behind
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["featmatch.format"] == "colmap"
    assert json.loads(meta["featmatch.config"])["filter_threshold"] == 0.2

    assert "extractor sift: no ONNX export" in capsys.readouterr().out

    assert export_main(["onnx", "--conf", "sift+nn", "--out", str(tmp_path / "nn.onnx")]) == 2
    assert "supports LightGlue only, got NearestNeighborMatcher" in capsys.readouterr().err
    assert export_main(["onnx", "--conf", "sift+lightglue-cpu", "--out", str(tmp_path / "cv.onnx"),
                        "--format", "opencv"]) == 2
    assert "no scale/orientation inputs" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sift_lg.onnx"]

    # SuperPoint is exported beside its matcher (random weights: no download in tests)
    assert export_main(["onnx", "--conf", "superpoint+lightglue", "--out", str(tmp_path / "sp.onnx"),
                        "model.extractor.weights=null", "model.matcher.weights=null"]) == 0
    assert {"sp.onnx", "sp.superpoint.onnx"} <= {p.name for p in tmp_path.iterdir()}
    assert [o.name for o in onnx.load(str(tmp_path / "sp.superpoint.onnx")).graph.output] == [
        "keypoints", "scores", "descriptors"]


# ---- extractors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["superpoint", "disk"])
def test_extractor_export_detects_and_describes_like_torch(name, synthetic_pair, tmp_path):
    """Random weights, two image sizes (H, W dynamic). Without a keypoint limit the keypoints are
    identical; with one, random weights give near-tied scores, so only the kept scores are compared
    exactly and the points mostly (ties at the cut may differ by float rounding)."""
    from featmatch_core.export.extractor_export import export_extractor
    from featmatch_core.models import build_model

    image = torch.from_numpy(synthetic_pair[0][:240, :320].copy()).float()[None, None] / 255
    for limit in (None, 300):
        torch.manual_seed(0)
        extractor = build_model("extractor", {"name": name, "weights": None, "resize": None,
                                              "max_num_keypoints": limit}, pretrained=False).eval()
        session = ort.InferenceSession(str(export_extractor(extractor, tmp_path / f"{name}.onnx")),
                                       providers=["CPUExecutionProvider"])
        for crop in (image, image[..., :224, :304]):
            batch = extractor.preprocess(crop)
            with torch.inference_mode():
                expected = extractor._extract(batch)[0]
            keypoints, scores, descriptors = session.run(None, {"image": batch.numpy()})
            assert len(keypoints) == len(expected["keypoints"]) > 50
            if limit is None:
                np.testing.assert_array_equal(keypoints, expected["keypoints"].numpy())
                assert np.abs(scores - expected["keypoint_scores"].numpy()).max() < 1e-5
                assert np.abs(descriptors - expected["descriptors"].numpy()).max() < 1e-4
            else:
                assert np.abs(np.sort(scores) - np.sort(expected["keypoint_scores"].numpy())).max() < 1e-5
                common = set(map(tuple, keypoints)) & set(map(tuple, expected["keypoints"].numpy()))
                assert len(common) >= 0.8 * limit


def test_extractor_without_export_is_named(tmp_path):
    from featmatch_core.export.extractor_export import export_extractor
    from featmatch_core.models import build_model

    with pytest.raises(ValueError, match="no ONNX export for the sift extractor"):
        export_extractor(build_model("extractor", {"name": "sift"}, pretrained=False), tmp_path / "sift.onnx")
