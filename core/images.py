"""Reading task images from files (PNG, JPEG, ...) into tensors the networks take."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import PriorswapError


def open_image(path: str | Path, mode: str | None = "RGB"):
    """The file as a PIL image (converted to `mode`; None keeps it as stored), loaded into memory.

    Raises a PriorswapError naming the file when it is missing, a folder, not an image or damaged."""
    from PIL import Image

    try:
        path = check_image_file(path)
    except ValueError as e:
        raise PriorswapError(str(e)) from None
    try:
        with Image.open(path) as img:
            return img.convert(mode) if mode is not None else img.copy()
    except OSError as e:  # a damaged file: the header reads, the pixels do not
        raise PriorswapError(f"{path} is a damaged image ({e})") from None


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
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file PIL can read") from None
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e})") from None
    return path


def load_image(path: str | Path, size: int | tuple[int, int] | None = None, mode: str = "RGB") -> torch.Tensor:
    """(1, C, H, W) float32 in [-1, 1] from an image file; `size` resizes (bicubic) to size×size or (H, W)."""
    from PIL import Image

    img = open_image(path, mode)
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
