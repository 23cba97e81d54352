"""Nearest-neighbour matcher on hand-made descriptors."""

from __future__ import annotations

import math

import pytest
import torch

from featmatch_core.models import build_model
from featmatch_core.models.matchers.nearest_neighbor import NearestNeighborMatcher


def unit(*components: float) -> list:
    norm = math.sqrt(sum(c * c for c in components))
    return [c / norm for c in components]


def feats(desc) -> dict:
    return {"descriptors": torch.tensor([desc], dtype=torch.float32)}


def pair(desc0, desc1, **extra):
    data = {"image0": feats(desc0), "image1": feats(desc1)}
    for side, values in extra.items():
        data[side]["keypoint_mask"] = torch.tensor([values])
    return data


A, B, C = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)


def test_builds_from_registry_and_validates_conf():
    assert isinstance(build_model("matcher", {"name": "nearest_neighbor"}), NearestNeighborMatcher)
    with pytest.raises(ValueError, match="ratio_thresh"):
        NearestNeighborMatcher({"ratio_thresh": -0.5})


def test_mutual_check():
    # image0 points 0 and 1 both have image1 point 0 as nearest neighbour; only 0 is mutual
    data = pair([A, unit(1, 0.3, 0), C], [unit(1, 0.1, 0), B, C])
    mutual = NearestNeighborMatcher()(data)
    assert mutual["matches0"].tolist() == [[0, -1, 2]]
    assert mutual["matches1"].tolist() == [[0, -1, 2]]
    assert mutual["matches"][0].tolist() == [[0, 0], [2, 2]]
    one_way = NearestNeighborMatcher({"mutual_check": False})(data)
    assert one_way["matches0"].tolist() == [[0, 0, 2]]
    assert one_way["matches1"].tolist() == [[0, 1, 2]]
    # score is (1 + cos) / 2: identical descriptors score 1, orthogonal 0.5
    assert mutual["matching_scores0"][0, 2].item() == pytest.approx(1.0)
    assert mutual["scores"][0].shape == (2,) and mutual["matching_scores0"][0, 1].item() == 0.0


def test_ratio_test():
    # point 0 is ambiguous (two candidates almost equally close), point 1 is distinctive
    # squared distances from A: 0.0025 and 0.0036, a ratio of distances of 0.83
    data = pair([A, B], [unit(1, 0.05, 0), unit(1, 0, 0.06), unit(0.1, 1, 0)])
    strict = NearestNeighborMatcher({"ratio_thresh": 0.8})(data)
    assert strict["matches0"].tolist() == [[-1, 2]]
    loose = NearestNeighborMatcher({"ratio_thresh": 0.9})(data)
    assert loose["matches0"].tolist() == [[0, 2]]


def test_ratio_test_with_a_single_candidate_passes():
    data = pair([A], [unit(1, 0.2, 0)])
    assert NearestNeighborMatcher({"ratio_thresh": 0.5})(data)["matches0"].tolist() == [[0]]


def test_distance_threshold():
    far = unit(1, 1, 0)  # distance to A is sqrt(2 - 2 cos 45deg) ~ 0.765
    data = pair([A, C], [far, C])
    assert NearestNeighborMatcher({"distance_thresh": 0.7})(data)["matches0"].tolist() == [[-1, 1]]
    assert NearestNeighborMatcher({"distance_thresh": 0.8})(data)["matches0"].tolist() == [[0, 1]]


def test_keypoint_mask_excludes_padding():
    # the padded image1 point would be the best candidate for image0 point 0
    data = pair([A, B], [A, unit(0.2, 1, 0), unit(0.8, 0.6, 0)], image1=[False, True, True])
    out = NearestNeighborMatcher()(data)
    assert out["matches0"].tolist() == [[2, 1]]
    assert out["matches1"][0, 0].item() == -1
    data = pair([A, B], [A, B], image0=[True, False])
    out = NearestNeighborMatcher()(data)
    assert out["matches0"].tolist() == [[0, -1]] and out["matches1"].tolist() == [[0, -1]]


def test_batch_zero_keypoints_and_errors():
    g = torch.Generator().manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(2, 10, 8, generator=g), dim=-1)
    out = NearestNeighborMatcher()({"image0": {"descriptors": desc}, "image1": {"descriptors": desc.flip(1)}})
    assert out["matches0"].tolist() == [list(range(9, -1, -1))] * 2
    empty = NearestNeighborMatcher()({"image0": {"descriptors": desc},
                                      "image1": {"descriptors": desc[:, :0]}})
    assert (empty["matches0"] == -1).all() and empty["matches1"].shape == (2, 0)
    assert empty["matches"][1].shape == (0, 2) and empty["matches0"].dtype == torch.int64
    with pytest.raises(ValueError, match="descriptor dimensions differ"):
        NearestNeighborMatcher()({"image0": {"descriptors": desc}, "image1": {"descriptors": desc[..., :4]}})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = NearestNeighborMatcher()({"image0": {"descriptors": desc}, "image1": {"descriptors": desc}})
    assert out["matching_scores0"].dtype == torch.float32 and (out["matches0"] == torch.arange(10)).all()


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_compact_matches_lists_each_pairs_matches_in_order(batch):
    from featmatch_core.models.matchers.common import compact_matches

    gen = torch.Generator().manual_seed(batch)
    matches0 = torch.randint(-1, 20, (batch, 30), generator=gen)
    matches0[:1, :] = -1  # a pair without matches
    scores0 = torch.rand(batch, 30, generator=gen)
    counts = (matches0 >= 0).sum(1).tolist()  # as a caller that read them already gives them
    for matches, scores in (compact_matches(matches0, scores0), compact_matches(matches0, scores0, counts)):
        assert len(matches) == len(scores) == batch
        for k in range(batch):
            rows = [i for i in range(30) if matches0[k, i] >= 0]
            assert matches[k].tolist() == [[i, int(matches0[k, i])] for i in rows]
            assert torch.equal(scores[k], scores0[k, rows])
            assert matches[k].shape == (len(rows), 2) and matches[k].dtype == torch.long
