"""Reading images and turning user input into the (B, C, H, W) float tensors models take.

Bad input is refused with an error that names the problem: wrong layout, wrong dtype,
NaN/Inf values, empty images, float images outside [0, 1].
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import torch

from .device import device_constant

ImageLike = np.ndarray | torch.Tensor

_INT_RANGES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_TORCH_INT_RANGES = {torch.uint8: 255.0}


def read_image(path: str | Path, grayscale: bool = False) -> np.ndarray:
    """Read an image file as RGB (H, W, 3) or grayscale (H, W) uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"could not decode image {path} (corrupt or unsupported format)")
    return image if grayscale else np.ascontiguousarray(image[..., ::-1])


def _check_finite_and_range(image: torch.Tensor) -> torch.Tensor:
    if image.numel() == 0:
        raise ValueError(f"empty image of shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or Inf values")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"float image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; "
            "pass uint8 images or divide by 255"
        )
    return image.clamp_(0.0, 1.0)


def numpy_channels_last(image: np.ndarray) -> np.ndarray:
    """A checked (H, W, C) view of an (H, W) or (H, W, C) numpy image, C in {1, 3} (alpha dropped)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"numpy images must be (H, W) or (H, W, C), got shape {image.shape}")
    if image.shape[-1] not in (1, 3, 4):
        layout = " (looks channels-first: numpy images are (H, W, C))" if image.shape[0] in (1, 3) else ""
        raise ValueError(f"numpy image with {image.shape[-1]} channels{layout}; expected 1, 3 or 4")
    return image[..., :3] if image.shape[-1] == 4 else image


def numpy_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) numpy image -> (1, C, H, W) float32 in [0, 1]."""
    image = numpy_channels_last(image)
    if image.dtype in _INT_RANGES:
        scale = _INT_RANGES[image.dtype]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).float() / scale
    elif image.dtype in (np.float32, np.float64, np.float16):
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).clone()
    else:
        raise TypeError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float in [0, 1]")
    return _check_finite_and_range(tensor.permute(2, 0, 1)[None].contiguous())


class PinnedStaging:
    """A reused page-locked host buffer for copies to a GPU: the copy is asynchronous (the host
    goes on) and faster than from pageable memory. The buffer is refilled only once the GPU has
    finished reading it (an event recorded after each copy); one copy at a time (a lock)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None
        self.lock = threading.Lock()

    def __reduce__(self) -> tuple:
        return (PinnedStaging, ())  # copies (deepcopy, pickle) start empty: a buffer and a lock are per object

    def to_device(self, source: torch.Tensor, device: torch.device) -> torch.Tensor:
        with self.lock:
            if self.buffer is None or self.buffer.shape != source.shape or self.buffer.dtype != source.dtype:
                self.buffer = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
            elif self.copied is not None:
                self.copied.synchronize()  # the previous image is still being read from the buffer
            self.buffer.copy_(source)
            on_device = self.buffer.to(device, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record(torch.cuda.current_stream(device))
            return on_device


def upload_image(image: ImageLike, device: torch.device, staging: PinnedStaging | None = None) -> torch.Tensor:
    """:func:`to_tensor_image` on ``device``. To a GPU, numpy uint8 images travel as they are (a
    quarter of float32's bytes; through ``staging`` when given) and are scaled there: they are
    in range by construction, so no check reads them back."""
    if device.type != "cuda" or not isinstance(image, np.ndarray):
        return to_tensor_image(image).to(device)
    array = numpy_channels_last(image)
    if array.dtype != np.uint8:
        return numpy_to_tensor(array).to(device)
    if array.size == 0:
        raise ValueError(f"empty image of shape {tuple(array.shape)}")
    source = torch.from_numpy(np.ascontiguousarray(array))
    on_device = staging.to_device(source, device) if staging is not None else source.to(device)
    return (on_device.permute(2, 0, 1)[None].float() / 255.0).contiguous()


def torch_to_tensor(image: torch.Tensor) -> torch.Tensor:
    """(H, W), (C, H, W) or (B, C, H, W) tensor -> (B, C, H, W) float32 in [0, 1]."""
    if image.ndim == 2:
        image = image[None]
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"tensor images must be (H, W), (C, H, W) or (B, C, H, W), got {tuple(image.shape)}")
    if image.shape[1] not in (1, 3):
        hint = " (channels-last? permute to (B, C, H, W))" if image.shape[-1] in (1, 3) else ""
        raise ValueError(f"tensor image with {image.shape[1]} channels{hint}; expected 1 or 3")
    if image.dtype in _TORCH_INT_RANGES:
        image = image.float() / _TORCH_INT_RANGES[image.dtype]
    elif image.is_floating_point():
        image = image.float().clone()
    else:
        raise TypeError(f"unsupported tensor dtype {image.dtype}; use uint8 or float in [0, 1]")
    return _check_finite_and_range(image)


def to_tensor_image(image: ImageLike) -> torch.Tensor:
    """Any supported image -> (B, C, H, W) float32 tensor in [0, 1], C in {1, 3}."""
    if isinstance(image, torch.Tensor):
        return torch_to_tensor(image)
    if isinstance(image, np.ndarray):
        return numpy_to_tensor(image)
    raise TypeError(f"expected a numpy array or torch tensor image, got {type(image).__name__}")


def to_grayscale(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) with the ITU-R 601 weights OpenCV uses."""
    if image.shape[1] == 1:
        return image
    weights = device_constant((0.299, 0.587, 0.114), image.device, image.dtype).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True)


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    return image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image


def to_uint8_numpy(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float tensor in [0, 1] -> (H, W) or (H, W, 3) uint8 for OpenCV/pycolmap."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0))
