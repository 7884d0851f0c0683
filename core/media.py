"""Writing results: PNG grids, latents as safetensors (atomically), and a rich progress bar."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .errors import PriorswapError


def write_atomic(path: Path, write) -> None:
    """Writes through a temporary file in the same folder, so a failure leaves no half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _stage(path, write)
    try:
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise type(e)(e.errno, e.strerror, str(path)) from e


@contextlib.contextmanager
def all_or_nothing(folders: tuple[Path | None, ...] = ()) -> Iterator[list[Path]]:
    """Collects the paths a run writes; if the block fails, removes them (and those of `folders` that did
    not exist before and are left empty), so a failed run leaves no outputs. A failed write (OSError)
    becomes a PriorswapError naming the file."""
    written: list[Path] = []
    new_folders = [f for f in folders if f is not None and not f.exists()]
    try:
        yield written
    except BaseException as e:
        for path in written:
            with contextlib.suppress(OSError):
                os.unlink(path)
        _remove_if_empty(new_folders)
        if isinstance(e, OSError):
            raise _write_error(e, "the outputs of this run were removed") from e
        raise


def _remove_if_empty(folders: list[Path]) -> None:
    """Removes those of `folders` (a failed run created them; innermost first) that are left empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty


def _write_error(e: OSError, outcome: str) -> PriorswapError:
    """A failed write (OSError) as the message a user sees: the file, the reason and what became of the run."""
    where = f" {e.filename}" if e.filename else ""
    return PriorswapError(f"could not write{where}: {e.strerror or e}; {outcome}")


def _stage(path: Path, write: Callable[[str], None]) -> str:
    """Writes `path`'s content to a new temporary file beside it (usual permissions); returns its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (tmp, None):  # name the destination, not the temporary file
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    return tmp


def write_together(files: list[tuple[Path, Callable[[str], None]]]) -> None:
    """Writes several files all or nothing: each `write(tmp)` fills a temporary file beside its destination;
    only once all are written are they renamed into place. If a write or a rename fails, the temporary files
    are removed and the files that were already there are put back, so a failed run never destroys a
    previous run's outputs; the failure (OSError) becomes a PriorswapError naming the file. Folders that
    did not exist are created, and removed again if the writing fails and they are left empty."""
    new_folders = []
    for path, _ in files:
        for folder in reversed(Path(path).parents):
            if not folder.exists() and folder not in new_folders:
                new_folders.append(folder)
    staged: list[tuple[Path, str]] = []
    moved: list[tuple[Path, str | None]] = []  # (destination, its previous file's backup or None)
    try:
        for path, write in files:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            staged.append((Path(path), _stage(Path(path), write)))
        for path, tmp in staged:
            backup = None
            if path.is_file() or path.is_symlink():
                fd, backup = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".previous", dir=path.parent)
                os.close(fd)
                os.replace(path, backup)
            moved.append((path, backup))
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise type(e)(e.errno, e.strerror, str(path)) from e
        for _, backup in moved:
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)
    except BaseException as e:
        for path, backup in reversed(moved):  # put the previous files back
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, path)
                elif path.is_file():
                    os.unlink(path)
        for _, tmp in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _remove_if_empty(list(reversed(new_folders)))
        if isinstance(e, OSError):
            raise _write_error(e, "none of this run's files were written, and the files that were there are "
                                  "kept") from e
        raise


def write_atomic_safetensors(path: Path, tensors: dict[str, torch.Tensor], record: dict | None = None) -> None:
    """Saves `tensors` as safetensors (atomically), with the run `record` in the header's metadata when given
    (`priorswap.provenance`)."""
    from safetensors.torch import save_file

    from .provenance import safetensors_metadata

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(cpu, tmp, metadata=safetensors_metadata(record)))


def to_grid(images: torch.Tensor, columns: int | None = None, pad: int = 2) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] → one (3, H', W') grid image with `pad` white pixels between cells."""
    b, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(b))
    rows = math.ceil(b / columns)
    grid = torch.ones(c, rows * (h + pad) + pad, columns * (w + pad) + pad)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = img
    return grid


def input_rows(seeds: int, inputs: int, samples: int) -> list[int]:
    """The order that lays out a sample grid one task input per row: `seeds` batches (concatenated seed by
    seed), each holding `inputs` × `samples` rows input by input, become rows of one input with its samples
    seed by seed. Returns indices into the concatenated batches."""
    per_seed = inputs * samples
    return [k * per_seed + j * samples + m for j in range(inputs) for k in range(seeds) for m in range(samples)]


def to_pil(image: torch.Tensor):
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def save_grid(images: torch.Tensor, path: Path, columns: int | None = None, record: dict | None = None) -> None:
    """Saves one image, or a grid of several, as a PNG (atomically), with the run `record` embedded
    (`priorswap.provenance`) when given."""
    from .provenance import png_info

    picture = images[0] if images.shape[0] == 1 else to_grid(images, columns)
    write_atomic(path, lambda tmp: to_pil(picture).save(tmp, format="PNG", pnginfo=png_info(record)))


def save_images(
    images: torch.Tensor, folder: Path, names: list[str], records: list[dict] | None = None
) -> list[Path]:
    """Saves each image as folder/<name>.png (atomically), each with its run record when given; returns
    the paths."""
    from .provenance import png_info

    folder.mkdir(parents=True, exist_ok=True)
    records = records if records is not None else [None] * len(names)
    with all_or_nothing() as paths:
        for image, name, record in zip(images, names, records, strict=True):
            path = folder / f"{name}.png"
            write_atomic(path, lambda tmp, image=image, info=png_info(record): to_pil(image).save(
                tmp, format="PNG", pnginfo=info))
            paths.append(path)
    return paths


@contextlib.contextmanager
def progress_callback(total: int, label: str, console) -> Iterator:
    """A rich progress bar advanced by the engine's step callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal and os.environ.get("CI") == "true",
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda info: progress.update(task, completed=info.index + 1)
