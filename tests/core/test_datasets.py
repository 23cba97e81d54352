"""Evaluation datasets on tiny fixtures written in the official layouts (no data downloaded).

fetch_archive runs against a real HTTP server on 127.0.0.1 serving generated archives.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from featmatch_core import weights
from featmatch_core.config import ConfigError
from featmatch_core.datasets import hpatches as hpatches_module
from featmatch_core.datasets.base import scaling_matrix
from featmatch_core.datasets.download import (
    DatasetUnavailableError,
    UnsafeArchiveError,
    ensure_dataset,
    fetch_archive,
    marker_path,
)
from featmatch_core.datasets.hpatches import LARGE_SEQUENCES, RELEASE, HPatches
from featmatch_core.datasets.megadepth import URL as MEGADEPTH_URL
from featmatch_core.datasets.megadepth import MegaDepth1500
from featmatch_core.datasets.posed_sequence import PosedSequence
from featmatch_core.datasets.synthetic import random_texture

pytestmark = pytest.mark.timeout(60)

RNG = np.random.default_rng(0)


# ---- helpers ---------------------------------------------------------------------
def _write_image(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = random_texture(height, width, seed)
    assert cv2.imwrite(str(path), cv2.merge([gray, gray // 2, 255 - gray]))


def _write_matrix(path: Path, matrix: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, matrix, fmt="%.12e")


def _homography(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = [[1, 1, 40], [1, 1, 40], [1e-3, 1e-3, 0]]
    H = np.eye(3) + np.diag([0.1, -0.05, 0.0]) + rng.uniform(-0.05, 0.05, (3, 3)) * scale
    return H / H[2, 2]


def _resize_points(points: np.ndarray, size_in: tuple[int, int], size_out: tuple[int, int]) -> np.ndarray:
    """Independent statement of the pixel-centre resize map: x' = (x + 0.5) * s - 0.5."""
    s = np.array(size_out, float) / np.array(size_in, float)
    return (points + 0.5) * s - 0.5


def _warp(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    homog = np.c_[points, np.ones(len(points))] @ H.T
    return homog[:, :2] / homog[:, 2:]


def _make_sequence(folder: Path, sizes: dict[int, tuple[int, int]], seed: int = 0) -> dict[int, np.ndarray]:
    """An HPatches sequence folder: k.ppm of the given (W, H) sizes and H_1_k for k > 1."""
    Hs = {}
    for k, (w, h) in sizes.items():
        _write_image(folder / f"{k}.ppm", w, h, seed + k)
        if k > 1:
            Hs[k] = _homography(seed * 10 + k)
            _write_matrix(folder / f"H_1_{k}", Hs[k])
    return Hs


@pytest.fixture
def hpatches_root(tmp_path: Path) -> Path:
    """Official layout: root/hpatches-sequences-release/{i_a, v_b, i_dc}/1..6.ppm + H_1_k."""
    release = tmp_path / "hp" / RELEASE
    sizes = {1: (64, 48), 2: (80, 60), 3: (64, 48), 4: (48, 64), 5: (64, 48), 6: (70, 50)}
    _make_sequence(release / "i_a", sizes, seed=1)
    _make_sequence(release / "v_b", sizes, seed=2)
    _make_sequence(release / "i_dc", {1: (40, 30), 2: (40, 30)}, seed=3)  # one of LARGE_SEQUENCES
    return tmp_path / "hp"


# ---- HPatches --------------------------------------------------------------------
def test_hpatches_pairs_subsets_and_roots(hpatches_root: Path) -> None:
    assert "i_dc" in LARGE_SEQUENCES and len(LARGE_SEQUENCES) == 8
    ds = HPatches(root=hpatches_root)
    assert len(ds) == 10 and ds.sequences == ["i_a", "v_b"]
    assert len(HPatches(root=hpatches_root / RELEASE)) == 10  # the release folder itself
    assert len(HPatches(root=hpatches_root, ignore_large_images=False)) == 11
    assert len(HPatches(root=hpatches_root, subset="v")) == 5
    assert all(item["is_illu"] for item in HPatches(root=hpatches_root, subset="i"))
    names = [item["name"] for item in HPatches(root=hpatches_root, resize=None)]
    assert len(set(names)) == 10 and "v_b/1_6" in names
    assert [ds.pair_name(i) for i in range(len(ds))] == names
    with pytest.raises(ConfigError, match="subset"):
        HPatches(root=hpatches_root, subset="x")
    with pytest.raises(ConfigError, match="unknown config key"):
        HPatches(root=hpatches_root, resise=480)


def test_hpatches_single_folder_like_shared_graffiti(tmp_path: Path) -> None:
    """A folder holding only v_graffiti/{1.ppm, 2.ppm, H_1_2} loads as one pair."""
    H = _make_sequence(tmp_path / "hpatches_format" / "v_graffiti", {1: (80, 64), 2: (80, 64)}, seed=5)[2]
    for root in (tmp_path / "hpatches_format", tmp_path / "hpatches_format" / "v_graffiti"):
        ds = HPatches(root=root, resize=None)
        assert len(ds) == 1
        item = ds[0]
        assert item["name"] == "v_graffiti/1_2" and item["scene"] == "v_graffiti"
        assert item["image0"].shape == (64, 80, 3) and item["image0"].dtype == np.uint8
        assert item["image_size0"] == (80, 64) and item["load_error"] is None
        np.testing.assert_allclose(item["H_0to1"], H, rtol=1e-10)
        assert item["H_0to1"].dtype == np.float64


def test_hpatches_resize_short_side_rescales_H(hpatches_root: Path) -> None:
    raw = HPatches(root=hpatches_root, resize=None, subset="i")
    small = HPatches(root=hpatches_root, resize=24, resize_side="short", subset="i")
    for a, b in zip(raw, small, strict=False):
        assert min(b["image_size0"]) == 24 and min(b["image_size1"]) == 24
        assert b["image0"].shape[1::-1] == b["image_size0"]
        assert b["original_image_size1"] == a["image_size1"]
        x0 = RNG.uniform(0, 40, (20, 2))
        expected = _resize_points(_warp(x0, a["H_0to1"]), a["image_size1"], b["image_size1"])
        got = _warp(_resize_points(x0, a["image_size0"], b["image_size0"]), b["H_0to1"])
        np.testing.assert_allclose(got, expected, atol=1e-9)
    # Glue Factory's rule: short side to 480, the other truncated: 80x60 -> 640x480, 48x64 -> 480x640.
    item = HPatches(root=hpatches_root, subset="i")[0]
    assert item["image_size0"] == (640, 480)
    long = HPatches(root=hpatches_root, resize=32, resize_side="long", subset="i")
    assert long[2]["image_size1"] == (24, 32)  # 4.ppm is 48x64 portrait


def test_hpatches_corrupt_image_gives_none_and_load_error(hpatches_root: Path) -> None:
    bad = hpatches_root / RELEASE / "v_b" / "3.ppm"
    bad.write_bytes(b"P6\n64 48\n255\n" + b"\x00" * 10)  # truncated
    ds = HPatches(root=hpatches_root, subset="v")
    items = list(ds)
    broken = [it for it in items if it["load_error"]]
    assert len(broken) == 1
    assert broken[0]["image1"] is None and broken[0]["image_size1"] is None
    assert broken[0]["image0"] is not None and "3.ppm" in broken[0]["load_error"]
    assert all(it["image1"] is not None for it in items if it is not broken[0])


def test_hpatches_missing_and_incomplete_folders(tmp_path: Path, hpatches_root: Path) -> None:
    for download in (True, False):  # offline (conftest): the fetch fails with the same instructions
        with pytest.raises(DatasetUnavailableError) as info:
            HPatches(root=tmp_path / "nowhere", download=download)
        text = str(info.value)
        assert hpatches_module.URL in text and "hpatches-sequences-release.tar.gz" in text
        assert str(tmp_path / "nowhere") in text
    (hpatches_root / RELEASE / "v_b" / "5.ppm").unlink()
    with pytest.raises(DatasetUnavailableError, match=r"v_b/5\.ppm"):
        HPatches(root=hpatches_root)
    _write_matrix(hpatches_root / RELEASE / "v_b" / "5.ppm", np.eye(3))  # restore a file, break an H
    (hpatches_root / RELEASE / "i_a" / "H_1_3").write_text("1 0 0\n0 1 zero\n0 0 1\n")
    with pytest.raises(ValueError, match=r"i_a/H_1_3:2"):
        HPatches(root=hpatches_root)


# ---- MegaDepth-1500 ----------------------------------------------------------------
def _rotation(seed: int, angle: float = 0.3) -> np.ndarray:
    axis = np.random.default_rng(seed).normal(size=3)
    return cv2.Rodrigues(axis / np.linalg.norm(axis) * angle)[0]


@pytest.fixture
def megadepth_root(tmp_path: Path) -> Path:
    root = tmp_path / "md"
    folder = root / "megadepth1500"
    sizes = {"0015/a.jpg": (80, 60), "0015/b.jpg": (60, 80), "0022/c.jpg": (64, 48), "0022/d.jpg": (64, 48)}
    for i, (name, (w, h)) in enumerate(sizes.items()):
        _write_image(folder / "images" / name, w, h, seed=i)
        depth = np.full((h, w), 2.0 + i, np.float32)
        depth[: h // 4] = 0.0  # invalid band
        path = (folder / "depths" / name).with_suffix(".h5")
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.create_dataset("depth", data=depth)
    K = np.array([[100.0, 0, 40.0], [0, 110.0, 30.0], [0, 0, 1]])
    R, t = _rotation(1), np.array([0.5, -0.1, 0.2])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    def fmt(a):
        return " ".join(f"{v:.10f}" for v in np.ravel(a))
    lines = [f"0015/a.jpg 0015/b.jpg {fmt(K)} {fmt(K * [[1], [1], [1]])} {fmt(R)} {fmt(t)}",
             f"0022/c.jpg 0022/d.jpg {fmt(K)} {fmt(K)} {fmt(T)}"]
    (folder / "pairs_calibrated.txt").write_text("\n".join(lines) + "\n")
    return root


def test_megadepth_pairs_K_scaling_and_depth(megadepth_root: Path) -> None:
    raw = MegaDepth1500(root=megadepth_root, resize=None, k_convention="opencv")
    assert len(raw) == 2
    assert len(MegaDepth1500(root=megadepth_root / "megadepth1500", resize=None)) == 2  # the folder itself
    item = raw[0]
    assert item["name"] == "0015-a.jpg/0015-b.jpg" and item["scene"] == "0015"
    K = np.array([[100.0, 0, 40.0], [0, 110.0, 30.0], [0, 0, 1]])
    np.testing.assert_allclose(item["K0"], K)
    np.testing.assert_allclose(item["T_0to1"][:3, :3], _rotation(1), atol=1e-9)
    np.testing.assert_allclose(item["T_0to1"][:3, 3], [0.5, -0.1, 0.2], atol=1e-9)
    np.testing.assert_allclose(raw[1]["T_0to1"], item["T_0to1"], atol=1e-9)  # 16-value form, same pose

    ds = MegaDepth1500(root=megadepth_root, resize=40)  # long side 40; COLMAP K -> OpenCV pixels
    item = ds[0]
    assert item["image_size0"] == (40, 30) and item["image_size1"] == (30, 40)
    sx, sy = 40 / 80, 30 / 60
    # colmap convention: scale K by the resize factors, then move the origin to the pixel centre
    np.testing.assert_allclose(item["K0"], [[100 * sx, 0, 40 * sx - 0.5], [0, 110 * sy, 30 * sy - 0.5], [0, 0, 1]])
    # the same through the resize map of a projected point: K' X = resize(K_opencv X)
    X = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 5.0]])
    K_cv = K - [[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]
    def project(K_, X_):
        return (X_ @ K_.T)[:, :2] / X_[:, 2:]
    np.testing.assert_allclose(project(item["K0"], X), _resize_points(project(K_cv, X), (80, 60), (40, 30)))
    depth = item["depth0"]
    assert depth.dtype == np.float32 and depth.shape == (30, 40)
    assert set(np.unique(depth)) == {0.0, 2.0}  # nearest neighbour: no blended values


def test_megadepth_bad_input(megadepth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError) as info:
        MegaDepth1500(root=tmp_path / "absent")
    assert MEGADEPTH_URL in str(info.value) and "megadepth1500.zip" in str(info.value)
    folder = megadepth_root / "megadepth1500"
    (folder / "images" / "0022" / "c.jpg").write_bytes(b"not a jpeg")
    (folder / "depths" / "0022" / "d.h5").write_bytes(b"garbage")
    ds = MegaDepth1500(root=megadepth_root)
    item = ds[1]
    assert item["image0"] is None and item["image1"] is not None and item["depth1"] is None
    assert "c.jpg" in item["load_error"] and "d.h5" not in item["load_error"]
    assert "d.h5" in item["depth_error"] and item["depth0"] is not None  # depth0 read, size unchecked
    assert ds[0]["load_error"] is None and ds[0]["depth_error"] is None
    assert [ds.pair_name(i) for i in range(len(ds))] == [it["name"] for it in ds]
    (folder / "images" / "0022" / "d.jpg").unlink()
    with pytest.raises(DatasetUnavailableError, match=r"0022/d\.jpg"):
        MegaDepth1500(root=megadepth_root)
    pairs = folder / "pairs_calibrated.txt"
    pairs.write_text(pairs.read_text().splitlines()[0] + "\n0015/a.jpg 0015/b.jpg 1 2 3\n")
    with pytest.raises(ValueError, match=r"pairs_calibrated\.txt:2: expected 32 fields"):
        MegaDepth1500(root=megadepth_root)


# ---- posed sequence --------------------------------------------------------------
def _pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


@pytest.fixture
def sequence_root(tmp_path: Path) -> Path:
    """5 frames 40x30, K, poses T_cam_world, depth npz, pairs.txt in the castle_simu-like format."""
    root = tmp_path / "seq"
    _write_matrix(root / "K.txt", np.array([[50.0, 0, 19.5], [0, 50.0, 14.5], [0, 0, 1]]))
    poses = {}
    for i in range(1, 6):
        name = f"{i:04d}"
        _write_image(root / "images" / f"{name}.png", 40, 30, seed=i)
        poses[name] = _pose(_rotation(i, 0.05 * i), np.array([0.1 * i, 0.0, 1.0]))
        _write_matrix(root / "poses" / f"{name}.txt", poses[name])
        depth = np.full((30, 40), 1.5, np.float32)
        depth[:, :5] = 0.0
        (root / "depth").mkdir(exist_ok=True)
        np.savez(root / "depth" / f"{name}.npz", depth=depth)
    T = poses["0003"] @ np.linalg.inv(poses["0001"])
    values = " ".join(f"{v:.9f}" for v in np.r_[T[:3, :3].ravel(), T[:3, 3]])
    (root / "pairs.txt").write_text(
        "# image0 image1 gap covis R(9) t(3)\n"
        f"images/0001.png images/0003.png 2 0.9 {values}\n"
        "0002 0003.png\n")
    return root


def test_posed_sequence_T_0to1_composition_by_hand(tmp_path: Path) -> None:
    """Camera 0 at the world origin; camera 1 turned 90 deg about z and shifted: check a point."""
    root = tmp_path / "hand"
    _write_matrix(root / "K.txt", np.array([[50.0, 0, 20], [0, 50.0, 15], [0, 0, 1]]))
    Rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    poses = {"0": np.eye(4), "1": _pose(Rz, np.array([1.0, 2.0, 3.0]))}  # T_cam_world
    for name, T in poses.items():
        _write_image(root / "images" / f"{name}.png", 40, 30)
        _write_matrix(root / "poses" / f"{name}.txt", T)
    item = PosedSequence(root=root, gaps=[1])[0]
    X_world = np.array([0.2, -0.4, 4.0])
    X_cam0 = X_world  # camera 0 = world
    X_cam1 = Rz @ X_world + [1.0, 2.0, 3.0]
    np.testing.assert_allclose(item["T_0to1"][:3, :3] @ X_cam0 + item["T_0to1"][:3, 3], X_cam1)
    assert "depth0" not in item  # no depth folder


def test_posed_sequence_pairs_file_gaps_resize(sequence_root: Path) -> None:
    ds = PosedSequence(root=sequence_root)  # auto: pairs.txt exists
    assert len(ds) == 2
    item = ds[0]
    assert item["name"] == "0001/0003" and item["gap"] == 2 and item["covis"] == pytest.approx(0.9)
    assert item["scene"] == "seq" and ds[1]["gap"] == 1 and ds[1]["covis"] is None
    T0 = np.loadtxt(sequence_root / "poses" / "0001.txt")
    T1 = np.loadtxt(sequence_root / "poses" / "0003.txt")
    np.testing.assert_allclose(item["T_0to1"], T1 @ np.linalg.inv(T0), atol=1e-9)
    assert item["depth0"].shape == (30, 40) and item["depth0"].dtype == np.float32

    gaps = PosedSequence(root=sequence_root, pairs_from="gaps", gaps=[1, 2])
    assert len(gaps) == 4 + 3 and {it["gap"] for it in gaps} == {1, 2}
    assert [gaps.pair_name(i) for i in range(len(gaps))] == [it["name"] for it in gaps]
    assert gaps[0]["name"] == "0001/0002" and gaps[-1]["name"] == "0003/0005"
    small = PosedSequence(root=sequence_root, pairs_from="gaps", gaps=[4], resize=20, resize_side="long")
    item = small[0]
    assert item["image_size0"] == (20, 15) and item["depth1"].shape == (15, 20)
    np.testing.assert_allclose(item["K0"], scaling_matrix((40, 30), (20, 15)) @ np.loadtxt(sequence_root / "K.txt"))
    assert item["K0"][0, 2] == pytest.approx((19.5 + 0.5) * 0.5 - 0.5)
    with pytest.raises(ConfigError, match="gaps"):
        PosedSequence(root=sequence_root, gaps=[0])


def test_posed_sequence_bad_input(sequence_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError, match="K.txt"):
        PosedSequence(root=tmp_path / "empty")
    pairs = sequence_root / "pairs.txt"
    good = pairs.read_text()
    pairs.write_text(good + "0001.png 0002.png 1\n")
    with pytest.raises(ValueError, match=r"pairs\.txt:4: expected"):
        PosedSequence(root=sequence_root)
    pairs.write_text(good.replace("0.9 ", "0.9 -", 1))  # flip the sign of R[0, 0]
    with pytest.raises(ValueError, match=r"pairs\.txt:2: R, t disagree"):
        PosedSequence(root=sequence_root)
    pairs.write_text("0001 0009\n")
    with pytest.raises(ValueError, match=r"pairs\.txt:1: image '0009'"):
        PosedSequence(root=sequence_root)
    pairs.write_text(good)
    (sequence_root / "images" / "0003.png").write_bytes(b"\x89PNG broken")
    item = PosedSequence(root=sequence_root)[0]
    assert item["image1"] is None and "0003.png" in item["load_error"]
    assert item["depth1"] is not None and item["depth_error"] is None  # read; its size cannot be checked
    _write_image(sequence_root / "images" / "0003.png", 40, 30)
    np.savez(sequence_root / "depth" / "0002.npz", depth=np.ones((10, 10), np.float32))  # wrong size
    item = PosedSequence(root=sequence_root)[1]
    assert item["load_error"] is None and item["depth0"] is None and "10x10" in item["depth_error"]


# ---- downloads -------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes]
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    monkeypatch.delenv("FEATMATCH_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "OFFLINE", False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    files: dict[str, bytes] = {}
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"files": files, "requests": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def test_fetch_archive_extracts_once(server, tmp_path: Path) -> None:
    base, files, requests = server
    files["/data/set.tar.gz"] = _tar_gz({"set/a.txt": b"alpha", "set/sub/b.txt": b"beta"})
    dest = tmp_path / "data" / "set_root"
    assert fetch_archive(base + "/data/set.tar.gz", None, dest, progress=False) == dest
    assert (dest / "set" / "a.txt").read_bytes() == b"alpha" and (dest / "set" / "sub" / "b.txt").is_file()
    assert marker_path(dest, "set.tar.gz").is_file()
    assert not (dest.parent / "set.tar.gz").exists()  # archive removed after extraction
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".set_root.extract")]
    fetch_archive(base + "/data/set.tar.gz", None, dest, progress=False)
    assert requests == ["/data/set.tar.gz"]  # the second call did not download
    shutil.rmtree(dest / "set")  # extracted data deleted since: the marker no longer counts
    fetch_archive(base + "/data/set.tar.gz", None, dest, progress=False)
    assert (dest / "set" / "a.txt").is_file() and len(requests) == 2


def test_fetch_archive_zip_and_checksum(server, tmp_path: Path) -> None:
    import hashlib

    base, files, _ = server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("megadepth1500/pairs_calibrated.txt", "x\n")
    files["/m.zip"] = buffer.getvalue()
    dest = tmp_path / "md"
    dest.mkdir()  # an existing empty folder is fine
    fetch_archive([base + "/m.zip"], hashlib.sha256(files["/m.zip"]).hexdigest(), dest, progress=False)
    assert (dest / "megadepth1500" / "pairs_calibrated.txt").read_text() == "x\n"
    with pytest.raises(ValueError, match="checksum"):
        fetch_archive([base + "/m.zip"], "0" * 64, tmp_path / "other", progress=False)


def test_fetch_archive_refuses_path_traversal(server, tmp_path: Path) -> None:
    base, files, _ = server
    files["/evil.tar.gz"] = _tar_gz({"ok/a.txt": b"a", "../evil.txt": b"pwned"})
    files["/link.tar.gz"] = _tar_gz({"ok/a.txt": b"a"}, links={"ok/escape": "../../outside"})
    dest = tmp_path / "area" / "dest"
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil\.txt"):
        fetch_archive(base + "/evil.tar.gz", None, dest, progress=False)
    with pytest.raises(UnsafeArchiveError, match="escape"):
        fetch_archive(base + "/link.tar.gz", None, tmp_path / "area" / "dest2", progress=False)
    assert not (tmp_path / "area" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not dest.exists() and not (tmp_path / "area" / "dest2").exists()
    assert not [p for p in (tmp_path / "area").iterdir() if ".extract-" in p.name]


def test_hpatches_downloads_through_fetch_archive(server, tmp_path: Path, monkeypatch) -> None:
    base, files, requests = server
    members = {}
    for k in (1, 2):
        ok, ppm = cv2.imencode(".ppm", cv2.cvtColor(random_texture(24, 32, k), cv2.COLOR_GRAY2BGR))
        assert ok
        members[f"{RELEASE}/v_x/{k}.ppm"] = ppm.tobytes()
    members[f"{RELEASE}/v_x/H_1_2"] = b"1 0 2\n0 1 3\n0 0 1\n"
    files["/hp.tar.gz"] = _tar_gz(members)
    monkeypatch.setattr(hpatches_module, "URL", base + "/hp.tar.gz")
    root = tmp_path / "hpatches"
    ds = HPatches(root=root, resize=None)
    assert len(ds) == 1 and ds[0]["image0"].shape == (24, 32, 3)
    np.testing.assert_allclose(ds[0]["H_0to1"], [[1, 0, 2], [0, 1, 3], [0, 0, 1]])
    assert len(HPatches(root=root)) == 1 and requests == ["/hp.tar.gz"]


def test_offline_fetch_error_names_url_archive_and_folder(tmp_path: Path) -> None:
    dest = tmp_path / "hpatches"
    url = "https://example.org/some/dataset-v1.tar.gz"
    with pytest.raises(DatasetUnavailableError) as info:  # FEATMATCH_OFFLINE=1 from conftest
        fetch_archive(url, None, dest, progress=False)
    text = str(info.value)
    assert url in text and "dataset-v1.tar.gz" in text and f"extract it into {dest}" in text
    assert "FEATMATCH_OFFLINE" in text and not dest.exists()


def test_offline_extracts_an_archive_put_there_by_hand(tmp_path: Path) -> None:
    dest = tmp_path / "set"
    (tmp_path / "set.tar.gz").write_bytes(_tar_gz({"inner/file.txt": b"hello"}))
    with pytest.raises(ValueError, match="expected sha256"):
        fetch_archive("https://example.org/set.tar.gz", "0" * 64, dest, progress=False)
    fetch_archive("https://example.org/set.tar.gz", None, dest, progress=False)
    assert (dest / "inner" / "file.txt").read_bytes() == b"hello"


def test_ensure_dataset_lists_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert ensure_dataset(tmp_path, ["a"]) == tmp_path
    with pytest.raises(DatasetUnavailableError) as info:
        ensure_dataset(tmp_path, ["a", "b/c.txt", "d"], what="thing", how="  get it from https://x/y")
    text = str(info.value)
    assert "thing" in text and "is incomplete" in text and str(tmp_path / "b" / "c.txt") in text
    assert str(tmp_path / "d") in text and "https://x/y" in text and str(tmp_path / "a") + "\n" not in text
    calls = []
    ensure_dataset(tmp_path, ["e"], fetch=lambda: calls.append((tmp_path / "e").mkdir()))
    assert len(calls) == 1
