"""GlueStick matcher and the wireframe extractor: official-key compatibility, equivariance,
padding, inputs without lines, junction sharing, the pipeline on the graffiti pair."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from featmatch_core.models.lines.wireframe import Wireframe, build_wireframe
from featmatch_core.models.matchers.gluestick import GlueStick
from featmatch_core.models.pipeline import Pipeline, pipeline_conf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GRAFFITI = Path(__file__).resolve().parents[2] / "featmatch_core" / "assets" / "graffiti"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def small_gluestick(**conf) -> GlueStick:
    """4 blocks, damped residual updates and sharp projections: random weights that give matches."""
    torch.manual_seed(0)
    model = GlueStick({"GNN_layers": ["self", "cross"] * 4, **conf}).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.3.weight"):
                param.mul_(0.2)
        model.final_proj.weight.mul_(16)
        model.final_line_proj.weight.mul_(16)
    return model


def wireframe_view(num_junctions: int, num_lines: int, num_free: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([320.0, 240.0])
    points = torch.rand(num_junctions + num_free, 2, generator=gen) * (size - 1)
    first = torch.randint(0, num_junctions, (num_lines,), generator=gen)
    step = torch.randint(1, num_junctions, (num_lines,), generator=gen)
    junc = torch.stack([first, (first + step) % num_junctions], -1)
    return {"keypoints": points[None],
            "descriptors": torch.nn.functional.normalize(torch.randn(1, len(points), 256, generator=gen), dim=-1),
            "keypoint_scores": torch.rand(1, len(points), generator=gen),
            "image_size": size[None], "lines": points[junc][None], "lines_junc_idx": junc[None],
            "line_scores": torch.rand(1, num_lines, generator=gen)}


def matching_pair(seed: int = 0, sizes=(20, 16, 40)) -> dict:
    """View 1 = view 0 with noisy descriptors (same order): points i <-> i, lines k <-> k."""
    view0 = wireframe_view(*sizes, seed=seed)
    view1 = {k: v.clone() for k, v in view0.items()}
    gen = torch.Generator().manual_seed(seed + 1)
    noise = 0.2 * torch.randn(view0["descriptors"].shape, generator=gen)
    view1["descriptors"] = torch.nn.functional.normalize(view0["descriptors"] + noise, dim=-1)
    view1["keypoints"] = view0["keypoints"] + 1.5
    view1["lines"] = view0["lines"] + 1.5
    return {"image0": view0, "image1": view1}


def permute_view(view: dict, point_perm: torch.Tensor, line_perm: torch.Tensor) -> dict:
    inverse = torch.argsort(point_perm)
    out = {k: v for k, v in view.items()}
    for key in ("keypoints", "descriptors", "keypoint_scores"):
        out[key] = view[key][:, point_perm]
    out["lines_junc_idx"] = inverse[view["lines_junc_idx"][:, line_perm]]
    out["lines"] = view["lines"][:, line_perm]
    out["line_scores"] = view["line_scores"][:, line_perm]
    return out


# ---- checkpoint ------------------------------------------------------------------------------
def official_fixture() -> dict:
    return json.loads((FIXTURES / "gluestick_official_keys.json").read_text())


def test_official_checkpoint_layout_loads_unchanged(tmp_path):
    fixture = official_fixture()
    shapes = {**fixture["parameters"], **fixture["buffers"]}
    gen = torch.Generator().manual_seed(0)
    model_state = {k: torch.randn(s, generator=gen) if s else torch.tensor(0.5) for k, s in shapes.items()}
    model_state = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in model_state.items()}
    model_state = {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else v) for k, v in model_state.items()}
    # the released tar: a training state; the pipeline's other parts under other prefixes
    model_state["extractor.sp.conv1a.weight"] = torch.zeros(64, 1, 3, 3)
    path = tmp_path / "checkpoint_GlueStick_MD.tar"
    torch.save({"model": model_state, "epoch": 3}, path)
    model = GlueStick.from_pretrained({"weights": str(path)})
    ours = model.state_dict()
    assert {f"matcher.{k}" for k in ours} == set(shapes)
    for key, value in model_state.items():
        if key.startswith("matcher."):
            assert torch.equal(ours[key[len("matcher."):]], value), key
    assert not model.training


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    lightglue = json.loads((FIXTURES / "lightglue_official_keys.json").read_text())["superpoint"]["parameters"]
    path = tmp_path / "lightglue.pth"
    torch.save({k: torch.zeros(s) for k, s in lightglue.items()}, path)
    with pytest.raises(ValueError, match="cannot load checkpoint .* into GlueStick") as err:
        GlueStick.from_pretrained({"weights": str(path)})
    assert "missing" in str(err.value) and "unexpected" in str(err.value)
    fixture = official_fixture()["parameters"]
    path = tmp_path / "official.tar"
    torch.save({"model": {k: torch.zeros(s) for k, s in fixture.items()}}, path)
    with pytest.raises(ValueError, match="shape mismatch"):
        GlueStick.from_pretrained({"weights": str(path), "descriptor_dim": 128, "input_dim": 128,
                                   "keypoint_encoder": [32, 64, 128]})


# ---- behaviour -----------------------------------------------------------------------------
@pytest.mark.parametrize("pairing", ["line", "reference"])
@torch.no_grad()
def test_matches_are_equivariant_to_permuting_points_and_lines(pairing):
    """With the reference's score pairing (endpoint j gets the score of line j mod L) the lines'
    order matters: there only the points are permuted."""
    model = small_gluestick(line_score_pairing=pairing)
    pair = matching_pair()
    out = model(pair)
    assert int((out["matches0"] >= 0).sum()) >= 10 and int((out["line_matches0"] >= 0).sum()) >= 4
    gen = torch.Generator().manual_seed(5)
    n0, n1 = pair["image0"]["keypoints"].shape[1], pair["image1"]["keypoints"].shape[1]
    l0, l1 = pair["image0"]["lines"].shape[1], pair["image1"]["lines"].shape[1]
    p0, p1 = torch.randperm(n0, generator=gen), torch.randperm(n1, generator=gen)
    q0, q1 = torch.randperm(l0, generator=gen), torch.randperm(l1, generator=gen)
    if pairing == "reference":
        q0, q1 = torch.arange(l0), torch.arange(l1)
    permuted = model({"image0": permute_view(pair["image0"], p0, q0),
                      "image1": permute_view(pair["image1"], p1, q1)})
    la, pla = out["log_assignment"], permuted["log_assignment"]
    torch.testing.assert_close(pla[:, :-1, :-1], la[:, :-1, :-1][:, p0][:, :, p1],
                               atol=1e-4, rtol=1e-4)
    line_la = out["line_log_assignment"][:, :-1, :-1][:, q0][:, :, q1]
    torch.testing.assert_close(permuted["line_log_assignment"][:, :-1, :-1], line_la, atol=1e-4, rtol=1e-4)
    # matches map through the permutations
    inv1, linv1 = torch.argsort(p1), torch.argsort(q1)
    expected = torch.where(out["matches0"][0, p0] >= 0, inv1[out["matches0"][0, p0].clamp(min=0)], -1)
    assert torch.equal(permuted["matches0"][0], expected)
    expected = torch.where(out["line_matches0"][0, q0] >= 0, linv1[out["line_matches0"][0, q0].clamp(min=0)], -1)
    assert torch.equal(permuted["line_matches0"][0], expected)


@torch.no_grad()
def test_bf16_autocast_runs_and_mostly_agrees_with_fp32():
    """precision=bf16 (the node's auto precision on CPUs with AMX): the line updates mix dtypes."""
    model, pair = small_gluestick(), matching_pair()
    ref = model(pair)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pair)
    assert torch.isfinite(out["log_assignment"]).all()
    agree = (out["matches0"] == ref["matches0"]).float().mean()
    assert agree > 0.8, agree
    assert int((out["line_matches0"] >= 0).sum()) >= 1


def pad_view(view: dict, points: int, lines: int) -> dict:
    n, num = view["keypoints"].shape[1], view["lines"].shape[1]
    out = {"image_size": view["image_size"]}
    for key in ("keypoints", "descriptors", "keypoint_scores"):
        v = view[key]
        out[key] = torch.cat([v, v.new_zeros((1, points - n, *v.shape[2:]))], 1)
    for key in ("lines", "line_scores", "lines_junc_idx"):
        v = view[key]
        out[key] = torch.cat([v, v.new_zeros((1, lines - num, *v.shape[2:]))], 1)
    out["keypoint_mask"] = torch.arange(points)[None] < n
    out["line_mask"] = torch.arange(lines)[None] < num
    return out


@torch.no_grad()
def test_padded_batch_equals_pairs_one_by_one():
    model = small_gluestick()
    pairs = [matching_pair(0, (20, 16, 40)), matching_pair(3, (14, 9, 25))]
    single = [model(p) for p in pairs]
    batch = {f"image{i}": {k: torch.cat([pad_view(p[f"image{i}"], 60, 16)[k] for p in pairs])
                           for k in pad_view(pairs[0]["image0"], 60, 16)} for i in (0, 1)}
    out = model(batch)
    for b, ref in enumerate(single):
        n, num = ref["matches0"].shape[1], ref["line_matches0"].shape[1]
        assert torch.equal(out["matches0"][b, :n], ref["matches0"][0])
        assert torch.equal(out["line_matches0"][b, :num], ref["line_matches0"][0])
        assert torch.equal(out["matches"][b], ref["matches"][0])
        assert torch.equal(out["line_matches"][b], ref["line_matches"][0])
        torch.testing.assert_close(out["line_matching_scores0"][b, :num], ref["line_matching_scores0"][0])
        assert (out["matches0"][b, n:] == -1).all() and (out["line_matches0"][b, num:] == -1).all()


@torch.no_grad()
def test_no_lines_one_side_without_lines_and_zero_length_segments_give_empty_line_matches():
    model = small_gluestick()
    pair = matching_pair()
    no_lines = {k: v for k, v in pair["image1"].items() if k not in ("lines", "lines_junc_idx", "line_scores")}
    out = model({"image0": pair["image0"], "image1": no_lines})
    assert out["line_matches0"].shape == (1, 16) and (out["line_matches0"] == -1).all()
    assert out["line_matches1"].shape == (1, 0) and out["line_matches"][0].shape == (0, 2)
    assert int((out["matches0"] >= 0).sum()) > 0  # the points still match
    # lines that cannot match sit in the dustbin with certainty: a loss on them is 0, not huge
    assert (out["line_log_assignment"][0, :-1, -1] == 0).all()
    zero_lines = dict(pair["image1"], lines=torch.zeros(1, 0, 2, 2), lines_junc_idx=torch.zeros(1, 0, 2).long(),
                      line_scores=torch.zeros(1, 0))
    out = model({"image0": zero_lines, "image1": zero_lines})
    assert out["line_matches0"].shape == (1, 0) and out["line_match_scores"][0].shape == (0,)
    degenerate = dict(pair["image1"], lines_junc_idx=torch.zeros_like(pair["image1"]["lines_junc_idx"]))
    out = model({"image0": pair["image0"], "image1": degenerate})  # every segment collapsed on one point
    assert (out["line_matches0"] == -1).all() and len(out["line_matches"][0]) == 0
    assert (out["line_log_assignment"][0, :-1, -1] == 0).all()
    no_points = {k: v[:, :0] for k, v in pair["image1"].items() if k != "image_size"}
    out = model({"image0": pair["image0"], "image1": {**no_points, "image_size": pair["image1"]["image_size"]}})
    assert (out["matches0"] == -1).all() and (out["line_matches0"] == -1).all()


def test_bad_wireframe_is_a_clear_error():
    model = small_gluestick()
    pair = matching_pair()
    bad = dict(pair["image0"], lines_junc_idx=pair["image0"]["lines_junc_idx"] + 1000)
    with pytest.raises(ValueError, match="lines_junc_idx points outside"):
        model({"image0": bad, "image1": pair["image1"]})
    missing = {k: v for k, v in pair["image0"].items() if k != "lines_junc_idx"}
    with pytest.raises(ValueError, match="no 'lines_junc_idx'"):
        model({"image0": missing, "image1": pair["image1"]})


# ---- wireframe -------------------------------------------------------------------------------
def test_l_shape_segments_share_one_junction():
    lines = np.array([[[10.0, 10.0], [60.0, 10.0]], [[61.5, 11.0], [61.0, 70.0]]])
    junctions, junc_scores, snapped, scores, junc_idx = build_wireframe(lines, np.array([1.0, 0.5]), radius=3.0)
    assert len(junctions) == 3 and junc_idx[0, 1] == junc_idx[1, 0]
    np.testing.assert_allclose(junctions[junc_idx[0, 1]], [60.75, 10.5])
    np.testing.assert_allclose(snapped[0, 1], snapped[1, 0])
    assert junc_scores[junc_idx[0, 1]] == pytest.approx(0.75)
    # a segment shorter than the radius collapses onto one junction and is dropped
    junctions, _, snapped, scores, junc_idx = build_wireframe(
        np.concatenate([lines, [[[100.0, 100.0], [101.0, 101.0]]]]), np.array([1.0, 0.5, 0.2]), radius=3.0)
    assert len(snapped) == 2 and len(junctions) == 3 and list(scores) == [1.0, 0.5]


@torch.no_grad()
def test_wireframe_on_a_drawn_l_shape():
    image = np.zeros((120, 160), np.uint8)
    cv2.fillPoly(image, [np.array([[20, 20], [130, 20], [130, 100], [100, 100], [100, 50], [20, 50]])], 255)
    extractor = Wireframe({"weights": None, "resize": None, "lines": {"min_length": 10.0},
                           "point_extractor": {"name": "superpoint", "max_num_keypoints": 50}})
    feats = extractor({"image": torch.from_numpy(image)[None, None].float() / 255})
    lines, junc = feats["lines"][0], feats["lines_junc_idx"][0]
    assert len(lines) >= 4
    torch.testing.assert_close(feats["keypoints"][0][junc], lines)  # endpoints are keypoints
    _, counts = torch.unique(junc, return_counts=True)
    assert (counts >= 2).sum() >= 3  # corners of the polygon are shared by two segments
    assert feats["descriptors"].shape == (1, feats["keypoints"].shape[1], 256)


# ---- pipeline --------------------------------------------------------------------------------
def test_pipeline_superpoint_lsd_gluestick_on_graffiti():
    conf = pipeline_conf("superpoint+lsd+gluestick", ["extractor.resize=320", "matcher.GNN_layers=[self,cross]",
                                                      "device=cpu"])
    pipe = Pipeline.from_conf(conf, pretrained=False)
    image0 = cv2.imread(str(GRAFFITI / "1.png"))
    image1 = cv2.imread(str(GRAFFITI / "2.png"))
    result = pipe.match(image0, image1)
    h, w = image0.shape[:2]
    assert isinstance(result.lines0, np.ndarray) and result.lines0.ndim == 3 and result.lines0.shape[1:] == (2, 2)
    assert len(result.lines0) > 20 and len(result.lines1) > 20
    # original pixels: the extractor worked at 320 px, the segments span the 800 px image
    assert result.lines0[..., 0].max() > 400 and (result.lines0 >= -0.5).all()
    assert (result.lines0[..., 0] < w).all() and (result.lines0[..., 1] < h).all()
    assert result.line_matches.dtype == np.int64 and result.line_matches.shape[1] == 2
    assert result.line_match_scores.shape == (len(result.line_matches),)
    if len(result.line_matches):
        assert result.line_matches[:, 0].max() < len(result.lines0)
    kp = result.keypoints0
    junctions = result.features0["lines_junc_idx"][0].cpu().numpy()
    np.testing.assert_allclose(kp[junctions], result.lines0, atol=1e-4)


# ---- training ----------------------------------------------------------------------------------
def test_one_training_step_on_generated_homographies(tmp_path):
    from featmatch_core.datasets.homographies import build_homography_datasets
    from featmatch_core.datasets.synthetic import random_texture
    from featmatch_core.train.two_view import TwoViewModel

    for i in range(3):
        image = random_texture(160, 200, seed=i)
        cv2.rectangle(image, (30, 30), (150, 120), 255, 3)  # straight edges: LSD segments in every view
        cv2.imwrite(str(tmp_path / f"p{i}.png"), image)
    features = {"name": "wireframe", "weights": None, "max_num_keypoints": 96, "resize": None,
                "point_extractor": {"name": "superpoint", "max_num_keypoints": 64}, "lines": {"max_num_lines": 24}}
    train_set, _ = build_homography_datasets({"root": str(tmp_path), "image_size": [120, 160], "train_pairs": 2,
                                              "val_pairs": 1, "val_fraction": 0.34, "features": features})
    items = [train_set[i] for i in range(2)]
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    assert batch["lines0"].shape == (2, 24, 2, 2) and batch["keypoints0"].shape == (2, 96, 2)
    assert batch["line_mask0"].any(1).all()
    model = TwoViewModel({"matcher": {"name": "gluestick", "GNN_layers": ["self", "cross"] * 2,
                                      "line_score_pairing": "line", "inter_supervision": [0],
                                      "inter_supervision_weights": [0.5]},
                          "pretrained": False}).train()
    pred = model(batch)
    assert (pred["gt_line_matches0"] >= 0).any()  # some lines labelled as matches
    losses, metrics = model.loss(pred, batch)
    total = losses["total"].mean()
    assert torch.isfinite(total) and float(losses["line_assignment"].detach().mean()) > 0
    total.backward()
    grads = {n: p.grad for n, p in model.matcher.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["line_bin_score"].abs() > 0 and grads["gnn.line_layers.0.mlp.0.weight"].abs().sum() > 0
    assert grads["inter_line_proj.0.weight"].abs().sum() > 0
    assert "line_match_precision" in metrics
