"""SuperGlue: official checkpoint layout, Sinkhorn marginals, equivariance, padding, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from featmatch_core import weights
from featmatch_core.models import build_model, get_model
from featmatch_core.models.matchers.lightglue import PADDING_LOG_SCORE
from featmatch_core.models.matchers.superglue import SuperGlue, log_optimal_transport, masked_batch_norm
from featmatch_core.train.two_view import TwoViewModel

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "superglue_official_keys.json"
SMALL = {"descriptor_dim": 32, "keypoint_encoder": [16, 32], "gnn_layers": ["self", "cross"] * 2,
         "sinkhorn_iterations": 20, "match_threshold": 0.0, "weights": None}
SIZE = torch.tensor([[640.0, 480.0]])
Feats = dict[str, torch.Tensor]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def small_model(**overrides) -> SuperGlue:
    torch.manual_seed(0)
    model = SuperGlue({**SMALL, **overrides}).eval()
    with torch.no_grad():  # sharper assignments than the random init: real matches to compare
        model.final_proj.weight.mul_(8.0)
    return model


def random_features(n: int, dim: int = 32, seed: int = 0, batch: int = 1) -> Feats:
    g = torch.Generator().manual_seed(seed)
    return {
        "keypoints": torch.rand(batch, n, 2, generator=g) * SIZE,
        "descriptors": torch.nn.functional.normalize(torch.randn(batch, n, dim, generator=g), dim=-1),
        "keypoint_scores": torch.rand(batch, n, generator=g),
        "image_size": SIZE.expand(batch, 2).clone(),
    }


def noisy_copy(feats: Feats, seed: int = 1) -> Feats:
    """The same points shuffled and perturbed: a pair with many true matches."""
    g = torch.Generator().manual_seed(seed)
    n = feats["keypoints"].shape[1]
    perm = torch.randperm(n, generator=g)
    out = {k: (v[:, perm].clone() if k != "image_size" else v.clone()) for k, v in feats.items()}
    out["descriptors"] = torch.nn.functional.normalize(
        out["descriptors"] + 0.05 * torch.randn(out["descriptors"].shape, generator=g), dim=-1)
    return out


def select(feats: Feats, index: torch.Tensor) -> Feats:
    return {k: (v[:, index] if k != "image_size" else v) for k, v in feats.items()}


@torch.no_grad()
def test_registry_default_conf_and_official_checkpoint_keys():
    assert get_model("matcher", "superglue") is SuperGlue
    model = SuperGlue()
    assert model.conf.sinkhorn_iterations == 100 and model.conf.match_threshold == 0.2
    assert model.conf.descriptor_dim == 256 and len(model.conf.gnn_layers) == 18
    official = json.loads(FIXTURE.read_text())["state_dict"]
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official
    with pytest.raises(Exception, match="unknown config key 'sinkhorn_iters'"):
        SuperGlue({"sinkhorn_iters": 3})
    with pytest.raises(ValueError, match="gnn_layers"):
        SuperGlue({"gnn_layers": ["self", "crosss"]})


def test_loads_official_layout_and_refuses_other_checkpoints(tmp_path, monkeypatch):
    official = json.loads(FIXTURE.read_text())["state_dict"]
    g = torch.Generator().manual_seed(3)
    state = {k: (torch.randn(shape, generator=g) if k != "bin_score" else torch.tensor(2.5))
             for k, shape in official.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "superglue_outdoor.pth"
    torch.save(state, path)
    model = build_model("matcher", {"name": "superglue", "weights": str(path)})
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    with pytest.raises(ValueError, match="not a SuperGlue checkpoint"):
        SuperGlue({"weights": None}).load_checkpoint_state_dict({"posenc.Wr.weight": torch.zeros(32, 2)}, "lg.pth")
    with pytest.raises(ValueError, match="descriptor_dim 256 and 18 GNN layers"):
        SuperGlue({**SMALL}).load_checkpoint_state_dict(state, "x.pth")
    bad = dict(state)
    bad["final_proj.bias"] = torch.zeros(128)
    with pytest.raises(ValueError, match="shape mismatch.*final_proj.bias"):
        SuperGlue({"weights": None}).load_checkpoint_state_dict(bad, "x.pth")
    del bad["final_proj.bias"]
    with pytest.raises(ValueError, match="missing 1 keys"):
        SuperGlue({"weights": None}).load_checkpoint_state_dict(bad, "x.pth")

    # the reference's `weights: outdoor` names the registry checkpoint; offline, a clear error
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "torch_hub_checkpoint_dir", lambda: tmp_path / "hub")
    with pytest.raises(weights.WeightsUnavailableError, match="superglue_outdoor.pth"):
        SuperGlue.from_pretrained({"weights": "outdoor"})


def test_sinkhorn_marginals_with_dustbins():
    g = torch.Generator().manual_seed(0)
    m, n = 7, 5
    scores = torch.randn(2, m, n, generator=g, dtype=torch.float64) * 3
    bin_score = torch.tensor(0.7, dtype=torch.float64)
    z = log_optimal_transport(scores, bin_score, iterations=200).exp()
    assert z.shape == (2, m + 1, n + 1)
    # mass 1 per real point, n in the dustbin row, m in the dustbin column (the last step fits columns)
    torch.testing.assert_close(z[:, :m].sum(2), torch.ones(2, m, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(z[:, :, :n].sum(1), torch.ones(2, n, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z[:, m].sum(1), torch.full((2,), float(n), dtype=torch.float64))
    torch.testing.assert_close(z[:, :, n].sum(1), torch.full((2,), float(m), dtype=torch.float64))

    # padding: per-pair counts, no mass on padded rows/columns, same values as the unpadded pair
    valid0 = torch.tensor([[True] * m, [True] * 4 + [False] * 3])
    valid1 = torch.tensor([[True] * n, [True] * 3 + [False] * 2])
    padded = log_optimal_transport(scores, bin_score, 200, valid0, valid1)
    alone = log_optimal_transport(scores[1:, :4, :3], bin_score, 200)
    torch.testing.assert_close(padded[1, :4, :3], alone[0, :4, :3])
    torch.testing.assert_close(padded[1, :4, n], alone[0, :4, 3])
    torch.testing.assert_close(padded[1, m, :3], alone[0, 4, :3])
    torch.testing.assert_close(padded[0], log_optimal_transport(scores[:1], bin_score, 200)[0])
    assert (padded[1, 4:m] == PADDING_LOG_SCORE).all() and (padded[1, :, 3:n] == PADDING_LOG_SCORE).all()
    # an image without real points: everything of the other one goes to its dustbin, no NaN
    nothing = log_optimal_transport(scores[:1], bin_score, 50, torch.zeros(1, m, dtype=torch.bool), None)
    assert torch.isfinite(nothing).all()
    torch.testing.assert_close(nothing[0, m, :n].exp(), torch.ones(n, dtype=torch.float64))


@torch.no_grad()
def test_permuting_keypoints_permutes_the_matches():
    model = small_model(return_all_layers=True)
    feats0 = random_features(60)
    feats1 = noisy_copy(feats0)
    out = model({"image0": feats0, "image1": feats1})
    assert int((out["matches0"] >= 0).sum()) > 20
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(5))
    out_p = model({"image0": select(feats0, perm), "image1": feats1})
    assert torch.equal(out_p["matches0"][0], out["matches0"][0, perm])
    torch.testing.assert_close(out_p["matching_scores0"][0], out["matching_scores0"][0, perm])
    # matches1 indexes image 0: a match to point perm[k] is now a match to k
    inverse = torch.argsort(perm)
    expected1 = torch.where(out["matches1"] >= 0, inverse[out["matches1"].clamp(min=0)], out["matches1"])
    assert torch.equal(out_p["matches1"], expected1)
    torch.testing.assert_close(out_p["log_assignment"][0][0, :-1], out["log_assignment"][0][0, perm], atol=1e-5,
                               rtol=1e-5)
    # compact lists agree with matches0
    rows = torch.nonzero(out["matches0"][0] >= 0).squeeze(1)
    assert torch.equal(out["matches"][0], torch.stack([rows, out["matches0"][0, rows]], -1))
    torch.testing.assert_close(out["scores"][0], out["matching_scores0"][0, rows])


def pad(feats: Feats, size: int) -> Feats:
    n = feats["keypoints"].shape[1]
    out = {k: (torch.cat([v, v.new_zeros((v.shape[0], size - n, *v.shape[2:]))], 1) if k != "image_size" else v)
           for k, v in feats.items()}
    out["keypoint_mask"] = torch.arange(size)[None] < n
    return out


def stack(*feats: Feats) -> Feats:
    return {k: torch.cat([f[k] for f in feats], 0) for k in feats[0]}


@torch.no_grad()
def test_padded_batch_equals_single_pairs_and_empty_inputs():
    model = small_model()
    a0, b0 = random_features(40, seed=1), random_features(25, seed=2)
    a1, b1 = noisy_copy(a0, 3), noisy_copy(random_features(30, seed=2), 4)
    batch = model({"image0": stack(pad(a0, 40), pad(b0, 40)), "image1": stack(pad(a1, 40), pad(b1, 40))})
    for k, (f0, f1) in enumerate(((a0, a1), (b0, b1))):
        single = model({"image0": f0, "image1": f1})
        n0, n1 = f0["keypoints"].shape[1], f1["keypoints"].shape[1]
        assert torch.equal(batch["matches0"][k, :n0], single["matches0"][0])
        assert torch.equal(batch["matches1"][k, :n1], single["matches1"][0])
        torch.testing.assert_close(batch["matching_scores0"][k, :n0], single["matching_scores0"][0])
        assert (batch["matches0"][k, n0:] == -1).all() and (batch["matching_scores0"][k, n0:] == 0).all()
        assert torch.equal(batch["matches"][k], single["matches"][0])
    assert int((batch["matches0"][0] >= 0).sum()) > 10

    # zero keypoints on either side, or a pair whose points are all padding: unmatched, no crash
    empty = random_features(0)
    for f0, f1 in ((empty, a1), (a0, empty), (empty, empty)):
        out = model({"image0": f0, "image1": f1})
        assert out["matches0"].shape == (1, f0["keypoints"].shape[1]) and (out["matches0"] == -1).all()
        assert out["matches"][0].shape == (0, 2) and out["scores"][0].shape == (0,)
    no_points = pad(random_features(0), 40)
    out = model({"image0": stack(pad(a0, 40), no_points), "image1": stack(pad(a1, 40), pad(b1, 40))})
    assert (out["matches0"][1] == -1).all() and (out["matches1"][1] == -1).all()
    assert torch.equal(out["matches"][0], batch["matches"][0]) and out["matches"][1].shape == (0, 2)


def test_input_errors_name_the_problem():
    model = small_model()
    feats = random_features(10)
    with pytest.raises(ValueError, match="lacks 'keypoint_scores'"):
        model({"image0": {k: v for k, v in feats.items() if k != "keypoint_scores"}, "image1": feats})
    with pytest.raises(ValueError, match=r"descriptors must be .* \(1, 10, 32\)"):
        model({"image0": random_features(10, dim=16), "image1": feats})
    bad = dict(feats, keypoints=feats["keypoints"].clone())
    bad["keypoints"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model({"image0": bad, "image1": feats})


def test_masked_batch_norm_ignores_padding():
    norm = torch.nn.BatchNorm1d(4).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, generator=g)
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
    x_padded = x.clone()
    x_padded[1, :, 2:] = 100.0  # garbage in the padding must not move the statistics
    real = torch.cat([x[0].t(), x[1, :, :2].t()], 0)
    expected = torch.nn.BatchNorm1d(4).train()(real)
    out = masked_batch_norm(norm, x_padded, mask)
    torch.testing.assert_close(out[0].t(), expected[:6])
    torch.testing.assert_close(out[1, :, :2].t(), expected[6:])


def test_trains_with_the_generic_two_view_loss():
    torch.manual_seed(0)
    model = TwoViewModel({"matcher": {"name": "superglue", **SMALL}, "pretrained": False})
    model.train()
    g = torch.Generator().manual_seed(0)
    kpts0 = torch.rand(2, 48, 2, generator=g) * SIZE
    H = torch.tensor([[1.0, 0.05, 10.0], [-0.03, 1.0, -5.0], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    kpts1 = kpts0 @ H[0, :2, :2].T + H[0, :2, 2]
    desc0 = torch.nn.functional.normalize(torch.randn(2, 48, 32, generator=g), dim=-1)
    desc1 = torch.nn.functional.normalize(desc0 + 0.3 * torch.randn(2, 48, 32, generator=g), dim=-1)
    mask = torch.ones(2, 48, dtype=torch.bool)
    mask[1, 40:] = False  # a padded pair too
    batch = {"keypoints0": kpts0, "keypoints1": kpts1, "descriptors0": desc0, "descriptors1": desc1,
             "keypoint_scores0": torch.rand(2, 48, generator=g), "keypoint_scores1": torch.rand(2, 48, generator=g),
             "keypoint_mask0": mask, "keypoint_mask1": mask, "image_size0": SIZE.expand(2, 2),
             "image_size1": SIZE.expand(2, 2), "H_0to1": H}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(4):
        pred = model(batch)
        assert len(pred["log_assignment"]) == 1 and pred["log_assignment"][0].shape == (2, 49, 49)
        losses, metrics = model.loss(pred, batch)
        loss = losses["total"].mean()
        assert torch.isfinite(loss) and torch.equal(losses["confidence"], torch.zeros(2))
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)
        assert model.matcher.bin_score.grad is not None
        optimizer.step()
        totals.append(float(loss.detach()))
    assert totals[-1] < totals[0]
