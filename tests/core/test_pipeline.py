"""Two-view pipeline, streaming form and the match CLI (offline: SIFT + NN, or random LightGlue)."""

import numpy as np
import pytest
import torch

import featmatch_core
from featmatch_core.config import ConfigError
from featmatch_core.datasets.synthetic import homography_pair
from featmatch_core.estimators.homography import opencv_homography
from featmatch_core.geometry.homography import corner_error, warp_points
from featmatch_core.match import main as match_main
from featmatch_core.models.pipeline import FeatureStream, Pipeline, pipeline_conf


@pytest.fixture(scope="module")
def sift_nn():
    return featmatch_core.load("sift+nn", ["extractor.max_num_keypoints=2048"])


def test_sift_nn_recovers_homography(sift_nn, synthetic_pair):
    image0, image1, H = synthetic_pair
    pred = sift_nn.match(image0, image1)
    assert len(pred.matches) > 100
    est = opencv_homography(pred.points0, pred.points1, threshold=3.0)
    assert est["success"]
    assert corner_error(est["model"], H, (640, 480)) < 3.0
    # most matches are geometrically right
    err = np.linalg.norm(warp_points(pred.points0, H) - pred.points1, axis=1)
    assert (err < 3).mean() > 0.7
    assert set(pred.timings) == {"extract0", "extract1", "match", "total"}


def test_result_arrays_are_consistent(sift_nn, synthetic_pair):
    pred = sift_nn.match(*synthetic_pair[:2])
    assert pred.keypoints0.shape[1] == 2 and pred.matches.dtype == np.int64
    assert pred.matches.shape == (len(pred.scores), 2)
    assert pred.matches[:, 0].max() < len(pred.keypoints0)
    assert pred.matches[:, 1].max() < len(pred.keypoints1)
    assert len(np.unique(pred.matches[:, 0])) == len(pred.matches)  # one-to-one


def test_blank_image_gives_zero_matches(sift_nn, synthetic_pair):
    pred = sift_nn.match(np.full((480, 640), 128, np.uint8), synthetic_pair[0])
    assert len(pred.keypoints0) == 0 and pred.matches.shape == (0, 2)
    pred = sift_nn.match(np.zeros((480, 640), np.uint8), np.zeros((480, 640), np.uint8))
    assert len(pred.matches) == 0


def test_image_larger_than_resize_limit_keeps_original_coordinates():
    image0, image1, H = homography_pair(960, 1280, seed=5)
    pipe = featmatch_core.load("sift+nn", {"extractor": {"resize": 640, "max_num_keypoints": 2048}})
    pred = pipe.match(image0, image1)
    assert pred.keypoints0[:, 0].max() > 700  # original pixels, not the 640-wide resize
    est = opencv_homography(pred.points0, pred.points1, threshold=4.0)
    assert est["success"] and corner_error(est["model"], H, (1280, 960)) < 5.0


def test_stream_extracts_each_frame_once(sift_nn, synthetic_pair):
    image0, image1, _ = synthetic_pair
    stream = FeatureStream(sift_nn)
    calls = []
    original = sift_nn.extractor.forward
    sift_nn.extractor.forward = lambda data: (calls.append(1), original(data))[1]
    try:
        assert stream.push(image0) is None
        r1 = stream.push(image1)
        r2 = stream.push(image0)
    finally:
        sift_nn.extractor.forward = original
    assert len(calls) == 3 and stream.num_extracted == 3
    assert len(r1.matches) > 100 and len(r2.matches) > 100
    # streaming gives the same matches as the two-view call
    direct = sift_nn.match(image0, image1)
    np.testing.assert_array_equal(direct.matches, r1.matches)
    assert "extract" in r1.timings


def test_stream_reuses_each_frames_lightglue_encoding(synthetic_pair):
    """Frames keep LightGlue's per-image work: the middle frame is encoded once for two pairs,
    and the matches are those of the two-view calls."""
    pipe = featmatch_core.load("sift+lightglue-cpu", ["extractor.max_num_keypoints=512"])
    image0, image1, _ = synthetic_pair
    stream = FeatureStream(pipe)
    frames = [stream.extract(image) for image in (image0, image1, image0)]
    first = stream.match(frames[0], frames[1])
    encoding = frames[1].matcher_state["lightglue"]
    second = stream.match(frames[1], frames[2])
    assert frames[1].matcher_state["lightglue"] is encoding
    for result, (a, b) in ((first, (0, 1)), (second, (1, 2))):
        direct = pipe.match_features(frames[a].features, frames[b].features)
        np.testing.assert_array_equal(result.matches, direct.matches)
        assert result.info["stop_layer"] == direct.info["stop_layer"]
    assert len(first.matches) > 100


def test_random_lightglue_pipeline_runs_offline(synthetic_pair):
    """LightGlue with random weights (weights=None): the pipeline wiring, not match quality."""
    pipe = featmatch_core.load("sift+lightglue", {"extractor": {"max_num_keypoints": 256},
                                                  "matcher": {"weights": None}})
    pred = pipe.match(*synthetic_pair[:2])
    assert pred.keypoints0.shape == (256, 2)
    assert 1 <= pred.info["stop_layer"] <= 9


def test_mismatched_extractor_and_matcher_dims():
    with pytest.raises(ConfigError, match="256-d"):
        featmatch_core.load("superpoint+lightglue", {"extractor": {"weights": None},
                                                     "matcher": {"features": "sift", "weights": None}})


def test_scale_ori_matcher_needs_scale_ori_extractor():
    conf = {"extractor": {"name": "superpoint", "weights": None},
            "matcher": {"name": "lightglue", "input_dim": 256, "add_scale_ori": True, "weights": None}}
    with pytest.raises(ConfigError, match="scale and orientation"):
        featmatch_core.load(conf)


def test_pipeline_conf_typo_raises():
    with pytest.raises(ConfigError, match="devcie"):
        Pipeline.from_conf({**pipeline_conf("sift+nn"), "devcie": "cpu"})
    with pytest.raises(ConfigError, match="max_num_keypoint"):
        featmatch_core.load("sift+nn", ["extractor.max_num_keypoint=10"])


def test_missing_weights_offline_error_names_file(tmp_path):
    from featmatch_core.weights import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="superpoint_lightglue"):
        featmatch_core.load("superpoint+lightglue", {"extractor": {"weights": None}}, download=False)
    # sift+lightglue has a SIFT fallback: it must not stand in for a matcher of other features
    with pytest.raises(WeightsUnavailableError, match="superpoint_lightglue"):
        featmatch_core.load("sift+lightglue", {"matcher": {"features": "superpoint"}}, download=False)


def test_bf16_cpu_path_runs(synthetic_pair):
    pipe = featmatch_core.load("sift+lightglue", {"extractor": {"max_num_keypoints": 128},
                                                  "matcher": {"weights": None}, "precision": "bf16"})
    pred = pipe.match(*synthetic_pair[:2])
    assert pred.scores.dtype == np.float32 and np.isfinite(pred.scores).all()


@pytest.mark.parametrize("native_bf16", [False, True])
def test_auto_precision_is_decided_once_by_the_hardware(monkeypatch, native_bf16):
    from featmatch_core import device as device_module

    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native_bf16)
    pipe = featmatch_core.load("sift+nn", {"precision": "auto", "device": "cpu"})
    assert pipe.conf.precision == ("bf16" if native_bf16 else "fp32")
    assert device_module.precision_for(torch.device("cuda"), "auto") == "fp16"
    assert device_module.precision_for(torch.device("cpu"), "fp32") == "fp32"  # explicit names stay
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*'auto'"):
        featmatch_core.load("sift+nn", {"precision": "fp8", "device": "cpu"})


def test_gpu_busy_is_read_from_nvml_on_cuda_only(monkeypatch):
    from featmatch_core import device as device_module
    from featmatch_core.device import gpu_busy_percent

    assert gpu_busy_percent(torch.device("cpu")) is None
    with monkeypatch.context() as patch:  # NVML as on a GPU machine
        patch.setattr(device_module, "has_nvml", lambda: True)
        patch.setattr(torch.cuda, "utilization", lambda device=None: 37)
        assert gpu_busy_percent(torch.device("cuda")) == 37.0

        def broken(device=None):
            raise RuntimeError("NVML: driver not loaded")

        patch.setattr(torch.cuda, "utilization", broken)
        assert gpu_busy_percent(torch.device("cuda")) is None  # a failed reading never ends a run


def test_fp16_on_cpu_is_refused(synthetic_pair):
    pipe = featmatch_core.load("sift+nn", {"precision": "fp16", "device": "cpu"})
    with pytest.raises(ValueError, match="fp16"):
        pipe.match(*synthetic_pair[:2])


def test_batched_forward_matches_single(sift_nn, synthetic_pair):
    image0, image1, _ = synthetic_pair
    def two(im):  # the image and its upside-down copy: a batch with different keypoint counts
        return torch.cat([featmatch_core.to_tensor_image(im),
                          featmatch_core.to_tensor_image(np.ascontiguousarray(im[::-1]))])

    batch = {"image0": two(image0), "image1": two(image1)}
    with torch.inference_mode():
        out = sift_nn(batch)
    single = sift_nn.match(image0, image1)
    np.testing.assert_array_equal(out["matches"][0].cpu().numpy(), single.matches)


def test_match_cli_on_bundled_pair(tmp_path, capsys):
    out = tmp_path / "viz.png"
    assert match_main(["--out", str(out), "model.extractor.max_num_keypoints=1024"]) == 0
    text = capsys.readouterr().out
    assert "matches:" in text and "corner error" in text
    import cv2

    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] > 1600


def test_match_cli_bad_override_is_reported(capsys):
    assert match_main(["model.extractor.max_num_keypoint=5"]) == 2
    assert "max_num_keypoint" in capsys.readouterr().err


CPU_MATCHER = {"name": "lightglue", "input_dim": 128, "add_scale_ori": True, "descriptor_dim": 128,
               "num_heads": 4, "n_layers": 6, "weights": "sift_lightglue_cpu"}


def test_offline_falls_back_to_bundled_matcher(tmp_path, monkeypatch, synthetic_pair, caplog):
    from featmatch_core import weights
    from featmatch_core.models import get_model

    model = get_model("matcher", "lightglue")({**CPU_MATCHER, "weights": None})
    torch.save(model.state_dict(), tmp_path / "sift_lightglue_cpu.pth")
    monkeypatch.setattr(weights, "bundled_dir", lambda: tmp_path)
    conf = {"extractor": {"max_num_keypoints": 128}, "fallback_matcher": CPU_MATCHER}
    with caplog.at_level("WARNING"):
        pipe = featmatch_core.load("sift+lightglue", conf, download=False)
    assert "fallback" in caplog.text and "sift_lightglue" in caplog.text
    assert pipe.matcher.conf.descriptor_dim == 128
    loaded = pipe.matcher.state_dict()["posenc.Wr.weight"].cpu()  # the pipeline may sit on CUDA
    torch.testing.assert_close(loaded, model.state_dict()["posenc.Wr.weight"])
    assert pipe.match(*synthetic_pair[:2]).keypoints0.shape == (128, 2)


def test_shipped_weights_are_the_offline_default_and_beat_nn(tmp_path, monkeypatch, synthetic_pair, sift_nn):
    """The named config, offline and with an empty cache, runs on the bundled trained matcher;
    with the same keypoints it finds more correct matches than mutual NN + ratio test."""
    from featmatch_core import weights

    monkeypatch.setenv("FEATMATCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FEATMATCH_OFFLINE", "1")
    pipe = featmatch_core.load("sift+lightglue", ["extractor.max_num_keypoints=2048"])
    assert weights.bundled_dir().joinpath("sift_lightglue_cpu.pth").is_file()
    assert pipe.matcher.conf.weights == "sift_lightglue_cpu" and pipe.matcher.conf.n_layers == 6
    image0, image1, H = synthetic_pair
    correct = {}
    for name, p in (("lightglue", pipe), ("nn", sift_nn)):
        pred = p.match(image0, image1)
        err = np.linalg.norm(warp_points(pred.points0, H) - pred.points1, axis=1)
        correct[name] = int((err < 3).sum())
        if name == "lightglue":
            assert (err < 3).mean() > 0.7
            est = opencv_homography(pred.points0, pred.points1, threshold=3.0)
            assert est["success"] and corner_error(est["model"], H, (640, 480)) < 3.0
    assert correct["lightglue"] > correct["nn"], correct


def test_missing_bundled_weights_is_a_clear_error(tmp_path, monkeypatch):
    from featmatch_core import weights

    monkeypatch.setattr(weights, "bundled_dir", lambda: tmp_path)
    with pytest.raises(weights.WeightsUnavailableError, match="reinstall"):
        weights.resolve_weights("sift_lightglue_cpu")


def test_warm_up_runs_every_bucketed_size_only_for_cpu_bf16():
    pipe = featmatch_core.load("sift+lightglue-cpu", ["precision=bf16", "device=cpu",
                                                      "extractor.max_num_keypoints=130"])
    assert pipe.warm_up() == 6  # sizes 64, 128, 192: pairs (a <= b)
    assert pipe.matcher.warm_up(64) == 0  # outside the bf16 autocast the matching runs in: nothing to do
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pipe.matcher.warm_up(64) == 1
    fp32 = featmatch_core.load("sift+lightglue-cpu", ["precision=fp32", "device=cpu"])
    assert fp32.warm_up() == 0 and featmatch_core.load("sift+nn", ["device=cpu"]).warm_up() == 0


def test_extractor_warm_up_runs_at_the_camera_size(monkeypatch):
    pipe = featmatch_core.load("sift+nn", {"device": "cpu", "extractor": {"max_num_keypoints": 64}})
    shapes = []
    original = pipe.extract
    monkeypatch.setattr(pipe, "extract", lambda image: (shapes.append(image.shape), original(image))[1])
    prepared = []  # then the extractor's own warm-up (graph captures), on the same image
    monkeypatch.setattr(pipe.extractor, "warm_up", lambda images: prepared.append(tuple(images.shape)) or 0)
    pipe.warm_up_extractor(48, 64)
    assert shapes == [(48, 64), (48, 64)] and prepared == [(1, 1, 48, 64)]
    with pytest.raises(ValueError, match="positive"):
        pipe.warm_up_extractor(0, 64)


def test_device_constants_are_made_once_and_usable_by_autograd():
    from featmatch_core.device import device_constant

    with torch.inference_mode():
        made = device_constant((1.5, 2.0), torch.device("cpu"))
        assert device_constant((1.5, 2.0), torch.device("cpu")) is made  # no new copy per call
    assert not made.is_inference() and made.dtype == torch.float32 and made.tolist() == [1.5, 2.0]
    weight = torch.ones(2, requires_grad=True)
    (weight * made).sum().backward()  # an inference tensor could not be saved for backward
    assert weight.grad.tolist() == [1.5, 2.0]
    assert device_constant((3, 4), torch.device("cpu"), torch.long).dtype == torch.long


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_to_numpy_together_round_trips_shapes_dtypes_and_values(device):
    from featmatch_core.device import to_numpy_together

    tensors = [torch.rand(5, 2) * 1000, torch.tensor([[3, -1], [2**40, 7]]), torch.tensor([True, False, True]),
               torch.tensor(12), torch.zeros(0, 2), torch.tensor([70000], dtype=torch.int32)]
    tensors = [t.to(device) for t in tensors]
    for packed in (True, None):  # packed (one transfer), and the default for this device
        arrays = to_numpy_together(*tensors, packed=packed)
        for tensor, array in zip(tensors, arrays, strict=True):
            expected = tensor.cpu().numpy()
            assert array.dtype == expected.dtype and array.shape == expected.shape
            np.testing.assert_array_equal(array, expected)
