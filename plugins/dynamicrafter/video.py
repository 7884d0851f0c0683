"""Video files: MP4 (H.264 through PyAV), GIF (PIL), frame strips, and reading frames back.

Frames are tensors (T, 3, H, W) in [0, 1]. PyAV (`pip install av`) writes MP4; decord (optional)
or PyAV read video files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from priorswap.errors import PriorswapError
from priorswap.media import write_atomic
from priorswap.provenance import dumps


def to_uint8(frames: torch.Tensor):
    """(T, 3, H, W) in [0, 1] → numpy (T, H, W, 3) uint8."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise PriorswapError(f"expected frames of shape (T, 3, H, W), got {tuple(frames.shape)}")
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def frame_strip(videos: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """(B, T, 3, H, W) → (B, 3, H, T·W + (T−1)·pad): the frames side by side."""
    b, t, c, h, w = videos.shape
    out = torch.ones(b, c, h, t * w + (t - 1) * pad, dtype=videos.dtype, device=videos.device)
    for i in range(t):
        out[..., i * (w + pad) : i * (w + pad) + w] = videos[:, i]
    return out


def _av():
    try:
        import av
    except ImportError:
        raise PriorswapError("writing and reading MP4 needs PyAV: pip install av") from None
    return av


def mp4_writer(frames: torch.Tensor, fps: int = 8, crf: int = 18, record: dict | None = None) -> Callable[[str], None]:
    """A function that writes (T, 3, H, W) frames as H.264 MP4 (yuv420p: odd sizes are padded to even) to the
    file name it is given, with the run `record` in the container's `comment` tag when given
    (`priorswap.provenance`); for `priorswap.media.write_atomic` / `write_together`."""
    av = _av()
    array = to_uint8(frames)
    h, w = array.shape[1:3]
    h2, w2 = h + h % 2, w + w % 2

    def write(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            if record is not None:
                container.metadata["comment"] = dumps(record)
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in array:
                if (h2, w2) != (h, w):
                    import numpy as np

                    frame = np.pad(frame, ((0, h2 - h), (0, w2 - w), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return write


def gif_writer(frames: torch.Tensor, fps: int = 8, record: dict | None = None) -> Callable[[str], None]:
    """A function that writes (T, 3, H, W) frames as a looping GIF (PIL) to the file name it is given, with the
    run `record` as its comment."""
    from PIL import Image

    images = [Image.fromarray(f) for f in to_uint8(frames)]
    duration = max(1, round(1000 / fps))
    extra = {"comment": dumps(record).encode()} if record is not None else {}
    return lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                      duration=duration, loop=0, **extra)


def strip_writer(frames: torch.Tensor, record: dict | None = None) -> Callable[[str], None]:
    """A function that writes (T, 3, H, W) frames side by side as one PNG, with the run `record` embedded."""
    from priorswap.media import to_pil
    from priorswap.provenance import png_info

    picture = to_pil(frame_strip(frames[None])[0])
    return lambda tmp: picture.save(tmp, format="PNG", pnginfo=png_info(record))


def write_mp4(frames: torch.Tensor, path: Path, fps: int = 8, crf: int = 18, record: dict | None = None) -> Path:
    """Writes (T, 3, H, W) frames as H.264 MP4 atomically (`mp4_writer`)."""
    write_atomic(Path(path), mp4_writer(frames, fps, crf, record))
    return Path(path)


def write_gif(frames: torch.Tensor, path: Path, fps: int = 8, record: dict | None = None) -> Path:
    """Writes (T, 3, H, W) frames as a looping GIF atomically (`gif_writer`)."""
    write_atomic(Path(path), gif_writer(frames, fps, record))
    return Path(path)


def save_video(frames: torch.Tensor, path: Path, fps: int = 8, record: dict | None = None) -> Path:
    """MP4, GIF or (frame strip) PNG by the file suffix, each with the run `record` when given."""
    suffix = Path(path).suffix.lower()
    if suffix == ".mp4":
        return write_mp4(frames, path, fps, record=record)
    if suffix == ".gif":
        return write_gif(frames, path, fps, record=record)
    if suffix == ".png":
        write_atomic(Path(path), strip_writer(frames, record))
        return Path(path)
    raise PriorswapError(f"unknown video format {suffix!r} for {path}: use .mp4, .gif or .png")


def read_video(path: Path, backend: str = "auto") -> torch.Tensor:
    """All frames of a video file as (T, 3, H, W) in [0, 1].

    `backend`: "decord", "av" (PyAV), or "auto": decord when installed, else PyAV; decord 0.6 fails on
    frames whose width is not a multiple of 32 (a row-alignment bug), which "auto" then reads with PyAV."""
    path = Path(path)
    if not path.is_file():
        raise PriorswapError(f"video file {path} does not exist")
    if backend not in ("auto", "decord", "av"):
        raise PriorswapError(f"unknown video backend {backend!r}: use auto, decord or av")
    if backend != "av":
        try:
            import decord
        except ImportError:
            if backend == "decord":
                raise PriorswapError("reading video with decord needs: pip install decord") from None
            decord = None
        if decord is not None:
            try:
                reader = decord.VideoReader(str(path))
                array = reader.get_batch(list(range(len(reader)))).asnumpy()
                return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0
            except decord.DECORDError:
                if backend == "decord":
                    raise
    import numpy as np

    av = _av()
    with av.open(str(path)) as container:
        array = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0
