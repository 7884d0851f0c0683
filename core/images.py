"""Reading task images from files (PNG, JPEG, ...) into tensors the networks take.

Every image is brought to 8 bits per channel first: 16-bit images (Pillow modes I;16, and I and F) are
scaled, not clipped, and transparent pixels are composited onto a background (white unless the task
says otherwise, `Task.image_background`)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .errors import PriorswapError

WHITE = 255
"""The default background of transparent pixels: objects on white, as Zero-1-to-3's preprocessing does."""
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def open_image(path: str | Path, mode: str | None = "RGB", background: int = WHITE):
    """The file as an 8-bit PIL image (converted to `mode`; None keeps its bands), loaded into memory.

    16-bit and float images are scaled to 8 bits (`to_8bit`); transparent pixels are composited onto the
    gray level `background` (0 black … 255 white). Raises a PriorswapError naming the file when it is
    missing, a folder, not an image, too large or damaged, or has pixel values that fit no 8-bit range."""
    from PIL import Image

    try:
        path = check_image_file(path)
    except ValueError as e:
        raise PriorswapError(str(e)) from None
    try:
        with Image.open(path) as img:
            img.load()
            flat = flatten_alpha(to_8bit(img, path), background)
            if mode is not None:
                return flat.convert(mode)
            return img.copy() if flat is img else flat
    except OSError as e:  # a damaged file: the header reads, the pixels do not
        raise PriorswapError(f"{path} is a damaged image ({e})") from None


def to_8bit(img, path: str | Path = "the image"):
    """`img` with 8 bits per channel: I;16 is divided by 257 (65535 → 255); I (32-bit integers) is taken
    as 8-bit values when all lie in 0–255, else as 16-bit ones (0–65535); F (float) as values in 0–1, else
    0–255. Other modes are returned as they are. A PriorswapError names the file when the values fit none."""
    import numpy as np
    from PIL import Image

    if img.mode not in (*_SIXTEEN_BIT, "I", "F"):
        return img
    values = np.asarray(img).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode in _SIXTEEN_BIT:
        scale = 1 / 257
    elif img.mode == "I" and low >= 0 and high <= 65535:
        scale = 1.0 if high <= 255 else 1 / 257
    elif img.mode == "F" and np.isfinite(values).all() and low >= 0 and high <= 255:
        scale = 255.0 if high <= 1 else 1.0
    else:
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise PriorswapError(f"{path} is a {kind} image with values from {low:g} to {high:g}, which fit no "
                             "8-bit range (0–255, 16-bit 0–65535, or 0–1 for floats); save it as an 8- or "
                             "16-bit image")
    return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), "L")


def flatten_alpha(img, background: int = WHITE):
    """`img` without transparency: RGB (or L for gray images) with transparent pixels composited onto the
    gray level `background`; an image without alpha or a transparent palette colour is returned as it is."""
    from PIL import Image

    bands = img.getbands()
    if "A" not in bands and "a" not in bands and "transparency" not in img.info:
        return img
    rgba = img.convert("RGBA")
    under = Image.new("RGBA", rgba.size, (background, background, background, 255))
    flat = Image.alpha_composite(under, rgba).convert("RGB")
    return flat.convert("L") if img.mode in ("LA", "La", "L") else flat


def check_image_file(path: str | Path) -> Path:
    """`path` (with ~ expanded) when it is a file whose header PIL recognises as an image; reads the header only.

    Raises ValueError naming the file otherwise (a pydantic validator: see `priorswap.task.ImageFile`)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        with Image.open(path):
            pass
    except Image.DecompressionBombError as e:  # not an OSError
        raise ValueError(too_large(path, e)) from None
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file PIL can read") from None
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e})") from None
    return path


def too_large(path: Path, error: Exception) -> str:
    """The message for an image over Pillow's decompression-bomb limit, with its pixel count."""
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = _pixels(int(found.group(1))) if found else "too many pixels"
    limit = _pixels(2 * (Image.MAX_IMAGE_PIXELS or 0))
    return (f"{path} is too large ({pixels}; Pillow refuses images over {limit} as a possible decompression "
            "bomb); downscale it first")


def _pixels(n: int) -> str:
    return f"{n / 1e6:,.0f} M pixels" if n >= 10**6 else f"{n:,} pixels"


def load_image(path: str | Path, size: int | tuple[int, int] | None = None, mode: str = "RGB",
               background: int = WHITE) -> torch.Tensor:
    """(1, C, H, W) float32 in [-1, 1] from an image file (`open_image`); `size` resizes (bicubic) to
    size×size or (H, W)."""
    from PIL import Image

    img = open_image(path, mode, background)
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        img = img.resize((w, h), Image.BICUBIC)
    return pil_to_tensor(img)


def pil_to_tensor(img) -> torch.Tensor:
    """A PIL image → (1, C, H, W) float32 in [-1, 1] (uint8 / 127.5 − 1, as the diffusers pipelines do)."""
    import numpy as np

    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
