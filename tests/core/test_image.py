import numpy as np
import pytest
import torch

from featmatch_core.image import PinnedStaging, read_image, to_grayscale, to_tensor_image, upload_image


def test_numpy_uint8_rgb_and_gray():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 255
    t = to_tensor_image(rgb)
    assert t.shape == (1, 3, 20, 30) and t.dtype == torch.float32
    assert torch.allclose(t[0, 0], torch.ones(20, 30))
    assert to_tensor_image(np.zeros((20, 30), np.uint8)).shape == (1, 1, 20, 30)
    assert to_tensor_image(np.full((4, 5), 65535, np.uint16)).max() == 1.0


def test_torch_layouts():
    assert to_tensor_image(torch.rand(3, 8, 9)).shape == (1, 3, 8, 9)
    assert to_tensor_image(torch.rand(2, 1, 8, 9)).shape == (2, 1, 8, 9)
    assert to_tensor_image(torch.full((8, 9), 255, dtype=torch.uint8)).max() == 1.0


@pytest.mark.parametrize("bad,err,match", [
    (np.zeros((3, 20, 30), np.uint8), ValueError, "channels-first"),
    (torch.rand(20, 30, 3), ValueError, "channels-last"),
    (np.zeros((20, 30, 3), np.int32), TypeError, "dtype"),
    (np.zeros((0, 30), np.uint8), ValueError, "empty"),
    (np.zeros((2, 2, 2, 2), np.uint8), ValueError, "shape"),
    (np.full((8, 8), 200.0, np.float32), ValueError, r"\[0, 1\]"),
    ([[0, 1]], TypeError, "numpy array or torch tensor"),
])
def test_bad_inputs_are_named(bad, err, match):
    with pytest.raises(err, match=match):
        to_tensor_image(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_inf_rejected(value):
    image = np.zeros((8, 8), np.float32)
    image[3, 3] = value
    with pytest.raises(ValueError, match="NaN or Inf"):
        to_tensor_image(image)
    with pytest.raises(ValueError, match="NaN or Inf"):
        to_tensor_image(torch.from_numpy(image))


def test_rgba_drops_alpha():
    assert to_tensor_image(np.zeros((5, 6, 4), np.uint8)).shape == (1, 3, 5, 6)


def test_grayscale_weights_match_opencv():
    import cv2

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ours = to_grayscale(to_tensor_image(rgb))[0, 0].numpy() * 255
    ref = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    assert np.abs(ours - ref).max() <= 1.0


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    with pytest.raises(IOError, match="corrupt"):
        read_image(corrupt)


@pytest.mark.parametrize("image", [
    np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint8),
    np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8),
    np.random.default_rng(2).integers(0, 65536, (24, 32), dtype=np.uint16),
    np.random.default_rng(3).random((24, 32, 3)).astype(np.float32),
])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_upload_image_equals_the_host_conversion(image, device):
    staging = PinnedStaging() if device == "cuda" else None
    expected = to_tensor_image(image)
    got = upload_image(image, torch.device(device), staging)
    assert got.device.type == device and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), expected, atol=1e-7, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_staging_on_cuda_is_reused_and_never_overwritten_early():
    staging = PinnedStaging()
    frames = [np.full((480, 640), value, np.uint8) for value in (10, 200, 30)]
    uploaded = [upload_image(frame, torch.device("cuda"), staging) for frame in frames]
    assert staging.buffer.is_pinned() and staging.buffer.shape == (480, 640, 1)
    for frame, tensor in zip(frames, uploaded, strict=True):
        assert torch.equal(tensor.cpu(), to_tensor_image(frame))
    with pytest.raises(ValueError, match="empty image"):
        upload_image(np.zeros((0, 5), np.uint8), torch.device("cuda"), staging)


def test_pinned_staging_copies_start_empty():
    import copy
    import pickle

    staging = PinnedStaging()
    staging.buffer = torch.zeros(3)  # as after an upload
    for copied in (copy.deepcopy(staging), pickle.loads(pickle.dumps(staging))):
        assert isinstance(copied, PinnedStaging) and copied.buffer is None and copied.lock is not staging.lock
    with pytest.raises(ValueError, match="channels"):
        upload_image(np.zeros((8, 8, 2), np.uint8), torch.device("cpu"))
