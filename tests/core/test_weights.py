"""featmatch_core.weights against a real HTTP server on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from featmatch_core import weights
from featmatch_core.weights import WeightsUnavailableError, load_checkpoint, resolve_weights

pytestmark = pytest.mark.timeout(60)

WEIGHTS_ID = "superpoint_lightglue"


@dataclass
class ServerState:
    """What the handler serves and how it misbehaves; what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    corrupt: bool = False  # serve the right length of wrong bytes
    drop_after: int | None = None  # announce the full length, send this many bytes, hang up
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState  # set on a per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state = self.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if state.corrupt:
            data = bytes(255 - b for b in data)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.drop_after is not None:
            body = body[: state.drop_after]
            self.close_connection = True
        self.wfile.write(body)


@dataclass
class Server:
    base_url: str
    state: ServerState

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture
def server() -> Iterator[Server]:
    state = ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Private cache and torch.hub dirs; no proxy between us and 127.0.0.1; online."""
    monkeypatch.setenv("FEATMATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FEATMATCH_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "OFFLINE", False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(weights, "DEFAULT_TIMEOUT", 5.0)


@pytest.fixture
def checkpoint(tmp_path: Path) -> bytes:
    """Bytes of a small real checkpoint (a few hundred KB, so it spans several read chunks)."""
    path = tmp_path / "fixture.pth"
    generator = torch.Generator().manual_seed(0)
    torch.save({"layer.weight": torch.randn(256, 256, generator=generator), "layer.bias": torch.zeros(256)}, path)
    return path.read_bytes()


def _point_registry(monkeypatch: pytest.MonkeyPatch, urls: list[str], sha256: str | None) -> Path:
    spec = dataclasses.replace(weights.REGISTRY[WEIGHTS_ID], urls=tuple(urls), sha256=sha256)
    monkeypatch.setitem(weights.REGISTRY, WEIGHTS_ID, spec)
    return weights.cache_dir() / spec.filename


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fresh_download_verified_then_cached(server: Server, checkpoint: bytes, monkeypatch) -> None:
    server.state.files["/ckpt.pth"] = checkpoint
    dest = _point_registry(monkeypatch, [server.url("/ckpt.pth")], _sha(checkpoint))

    path = resolve_weights(WEIGHTS_ID)
    assert path == dest
    assert path.read_bytes() == checkpoint
    assert not dest.with_name(dest.name + ".part").exists()
    assert len(server.state.requests) == 1

    assert resolve_weights(WEIGHTS_ID) == dest
    assert len(server.state.requests) == 1, "a cached checkpoint must not be downloaded again"
    state = load_checkpoint(path)
    assert set(state) == {"layer.weight", "layer.bias"}


def test_download_without_recorded_checksum_logs_it(server: Server, checkpoint: bytes, monkeypatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    server.state.files["/ckpt.pth"] = checkpoint
    _point_registry(monkeypatch, [server.url("/ckpt.pth")], None)
    with caplog.at_level("INFO", logger="featmatch_core.weights"):
        resolve_weights(WEIGHTS_ID)
    assert _sha(checkpoint) in caplog.text


def test_resume_from_truncated_part(server: Server, checkpoint: bytes, monkeypatch) -> None:
    server.state.files["/ckpt.pth"] = checkpoint
    dest = _point_registry(monkeypatch, [server.url("/ckpt.pth")], _sha(checkpoint))
    dest.parent.mkdir(parents=True)
    half = len(checkpoint) // 2
    dest.with_name(dest.name + ".part").write_bytes(checkpoint[:half])

    path = resolve_weights(WEIGHTS_ID)
    assert server.state.requests == [("/ckpt.pth", f"bytes={half}-")]
    assert path.read_bytes() == checkpoint


def test_interrupted_download_leaves_only_part_then_resumes(server: Server, checkpoint: bytes,
                                                            monkeypatch) -> None:
    server.state.files["/ckpt.pth"] = checkpoint
    dest = _point_registry(monkeypatch, [server.url("/ckpt.pth")], _sha(checkpoint))
    server.state.drop_after = 100_000

    with pytest.raises(WeightsUnavailableError, match="closed after 100000"):
        resolve_weights(WEIGHTS_ID)
    assert not dest.exists()
    assert dest.with_name(dest.name + ".part").stat().st_size == 100_000

    server.state.drop_after = None
    assert resolve_weights(WEIGHTS_ID).read_bytes() == checkpoint
    assert server.state.requests[-1] == ("/ckpt.pth", "bytes=100000-")


def test_server_ignoring_range_restarts_cleanly(server: Server, checkpoint: bytes, monkeypatch) -> None:
    server.state.files["/ckpt.pth"] = checkpoint
    server.state.ignore_range = True
    dest = _point_registry(monkeypatch, [server.url("/ckpt.pth")], _sha(checkpoint))
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(checkpoint[:1000])

    path = resolve_weights(WEIGHTS_ID)
    assert server.state.requests == [("/ckpt.pth", "bytes=1000-")]
    assert path.read_bytes() == checkpoint  # not the first 1000 bytes twice


def test_complete_part_is_finished_without_downloading(server: Server, checkpoint: bytes, monkeypatch) -> None:
    server.state.files["/ckpt.pth"] = checkpoint
    dest = _point_registry(monkeypatch, [server.url("/ckpt.pth")], _sha(checkpoint))
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(checkpoint)  # crashed just before the rename

    assert resolve_weights(WEIGHTS_ID).read_bytes() == checkpoint
    assert server.state.requests == [("/ckpt.pth", f"bytes={len(checkpoint)}-")]  # answered 416


def test_checksum_mismatch_raises_and_leaves_no_file(server: Server, checkpoint: bytes, monkeypatch) -> None:
    server.state.files["/ckpt.pth"] = checkpoint
    server.state.corrupt = True
    dest = _point_registry(monkeypatch, [server.url("/ckpt.pth")], _sha(checkpoint))

    with pytest.raises(ValueError, match="checksum") as info:
        resolve_weights(WEIGHTS_ID)
    message = str(info.value)
    assert _sha(checkpoint) in message
    assert _sha(bytes(255 - b for b in checkpoint)) in message
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()


def test_stale_bad_part_is_discarded_and_downloaded_again(server: Server, checkpoint: bytes,
                                                          monkeypatch) -> None:
    server.state.files["/ckpt.pth"] = checkpoint
    dest = _point_registry(monkeypatch, [server.url("/ckpt.pth")], _sha(checkpoint))
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(b"x" * 1000)  # left by an older, different file

    assert resolve_weights(WEIGHTS_ID).read_bytes() == checkpoint
    assert server.state.requests == [("/ckpt.pth", "bytes=1000-"), ("/ckpt.pth", None)]


def test_first_url_404_falls_back_to_second(server: Server, checkpoint: bytes, monkeypatch) -> None:
    server.state.files["/mirror/ckpt.pth"] = checkpoint
    dest = _point_registry(monkeypatch, [server.url("/missing.pth"), server.url("/mirror/ckpt.pth")],
                           _sha(checkpoint))

    assert resolve_weights(WEIGHTS_ID) == dest
    assert [path for path, _ in server.state.requests] == ["/missing.pth", "/mirror/ckpt.pth"]
    assert dest.read_bytes() == checkpoint


def test_all_urls_failing_raises_unavailable_with_instructions(server: Server, monkeypatch) -> None:
    dest = _point_registry(monkeypatch, [server.url("/a.pth"), server.url("/b.pth")], None)
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(WEIGHTS_ID)
    message = str(info.value)
    assert str(dest) in message and server.url("/a.pth") in message and "404" in message


@pytest.mark.parametrize("how", ["env", "module", "argument"])
def test_offline_raises_with_path_and_url(server: Server, checkpoint: bytes, monkeypatch, how: str) -> None:
    server.state.files["/ckpt.pth"] = checkpoint
    dest = _point_registry(monkeypatch, [server.url("/ckpt.pth")], None)
    if how == "env":
        monkeypatch.setenv("FEATMATCH_OFFLINE", "1")
    elif how == "module":
        monkeypatch.setattr(weights, "OFFLINE", True)

    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(WEIGHTS_ID, download=how != "argument")
    message = str(info.value)
    assert str(dest) in message
    assert server.url("/ckpt.pth") in message
    assert "FEATMATCH_CACHE_DIR" in message
    assert server.state.requests == []
    assert isinstance(info.value, RuntimeError)


def test_download_function_respects_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEATMATCH_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError):
        weights.download(["http://127.0.0.1:9/x.pth"], tmp_path / "x.pth")


def test_torch_hub_copy_under_reference_name_is_used(checkpoint: bytes, monkeypatch) -> None:
    _point_registry(monkeypatch, ["http://127.0.0.1:9/never-contacted.pth"], _sha(checkpoint))
    hub = weights.torch_hub_checkpoint_dir()
    hub.mkdir(parents=True)
    (hub / "superpoint_lightglue_v0-1_arxiv.pth").write_bytes(checkpoint)

    assert resolve_weights(WEIGHTS_ID, download=False) == hub / "superpoint_lightglue_v0-1_arxiv.pth"


def test_path_source_returned_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "my weights.pth"
    path.write_bytes(b"anything")
    assert resolve_weights(str(path)) == path


def test_unknown_id_lists_known_ids() -> None:
    with pytest.raises(ValueError, match="superpoint_lightglue") as info:
        resolve_weights("no_such_checkpoint")
    assert "no_such_checkpoint" in str(info.value)
    assert not isinstance(info.value, WeightsUnavailableError)


def test_corrupt_checkpoint_names_file_and_suggests_deleting(tmp_path: Path, checkpoint: bytes) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(checkpoint[: len(checkpoint) // 2])
    with pytest.raises(ValueError, match="delete it") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_checkpoint_unwraps_training_checkpoints_but_not_extractor(tmp_path: Path) -> None:
    tensors = {"w": torch.ones(2)}
    torch.save({"model": tensors, "epoch": 3}, tmp_path / "train.pth")
    torch.save({"state_dict": tensors}, tmp_path / "lightning.pth")
    torch.save({"extractor": tensors}, tmp_path / "disk.pth")
    assert set(load_checkpoint(tmp_path / "train.pth")) == {"w"}
    assert set(load_checkpoint(tmp_path / "lightning.pth")) == {"w"}
    assert set(load_checkpoint(tmp_path / "disk.pth")) == {"extractor"}


def test_cache_dir_defaults(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEATMATCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "featmatch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "featmatch"
    assert not (tmp_path / "home").exists()  # looking the directory up must not create it
