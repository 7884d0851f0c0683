"""`priorswap video`: sample a DynamiCrafter / VideoCrafter2 model and write MP4, GIF and a frame-strip PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from priorswap.errors import PriorswapError

VIDEO_TASKS = ("image-to-video", "text-to-video")


def video_task(model: str, allow_pickle: bool = False) -> str:
    """The task of `model` (registry id, folder or checkpoint file), read before any weights load; a
    PriorswapError when it is not a video model."""
    from priorswap.loading import task_for
    from priorswap.plugin_manager import get_plugins

    task, _ = task_for(model, [], get_plugins(), allow_pickle=allow_pickle)
    if task not in VIDEO_TASKS:
        raise PriorswapError(f"'{model}' is not a video model (its task is {task}): `priorswap video` takes "
                             "DynamiCrafter / VideoCrafter models; use `priorswap sample` for image models")
    return task


def register(cli: typer.Typer) -> None:
    """Adds `video` to the `priorswap` app (called from the plugin's register_commands hook)."""

    @cli.command()
    def video(
        model: Annotated[str, typer.Option(
            help="DynamiCrafter / VideoCrafter registry id, folder or checkpoint file (FILE or FILE#variant).")],
        prompt: Annotated[str, typer.Option(help="Text prompt.")],
        out: Annotated[Path, typer.Option(help="MP4 file; a .gif and a frame-strip .png are written beside it.")],
        image: Annotated[Path | None, typer.Option(help="First frame (image-to-video).")] = None,
        end_image: Annotated[Path | None, typer.Option(help="Last frame (interpolation checkpoint).")] = None,
        prior: Annotated[str | None, typer.Option(
            help="Prior (VideoCrafter2): registry id, folder or checkpoint file.")] = None,
        method: Annotated[str | None, typer.Option(help="cfg, prior-swap, dual-cfg, dual-prior-swap, ...")] = None,
        guidance: Annotated[float | None, typer.Option(help="Text guidance scale γT.")] = None,
        image_guidance: Annotated[float | None, typer.Option(help="Image guidance scale γI (dual).")] = None,
        rescale: Annotated[float | None, typer.Option(help="Guidance rescale φ (default: the model's).")] = None,
        frames: Annotated[int | None, typer.Option(help="Number of frames (default: the model's).")] = None,
        fs: Annotated[int | None, typer.Option(help="Frame stride / frame rate condition.")] = None,
        steps: Annotated[int, typer.Option(help="DDIM steps.")] = 50,
        eta: Annotated[float, typer.Option(help="DDIM η (the official samplers use 1).")] = 1.0,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        video_fps: Annotated[int, typer.Option(help="Playback frame rate of the files.")] = 8,
        allow_pickle: Annotated[bool, typer.Option(help="Allow pickled weights.")] = False,
        device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")] = None,
        dtype: Annotated[str, typer.Option(help="Weights dtype of model and prior: fp32, fp16, bf16.")] = "fp32",
        autocast: Annotated[
            str | None, typer.Option(help="Run the networks under torch.autocast in fp16/bf16 (as the official "
                                     "scripts on GPU); weights keep --dtype.")
        ] = None,
        posterior_seed: Annotated[
            int | None, typer.Option(help="Encode the frame(s) with a VAE posterior draw from this seed, as the "
                                     "official scripts (default: the posterior mean).")
        ] = None,
    ) -> None:
        """Image-to-video (DynamiCrafter, dual guidance) or text-to-video (VideoCrafter2) to MP4 + GIF + PNG."""
        if out.suffix.lower() != ".mp4":
            raise PriorswapError(f"--out must be an .mp4 file, got {out}")
        from priorswap import checks

        checks.writable_file(out, "--out")  # the .gif and .png go beside it
        device = checks.device(device)
        from priorswap.dtypes import parse_dtype

        weights = parse_dtype(dtype, "--dtype")
        mixed = parse_dtype(autocast, "--autocast") if autocast is not None else None
        task = video_task(model, allow_pickle)
        if task == "image-to-video" and image is None:
            raise PriorswapError(f"'{model}' is an image-to-video model: it needs --image (the first frame)")
        if task == "text-to-video" and (image is not None or end_image is not None or posterior_seed is not None):
            raise PriorswapError(f"'{model}' is a text-to-video model: it takes no --image / --end-image / "
                                 "--posterior-seed")
        from priorswap.images import check_image_file

        for option, path in (("--image", image), ("--end-image", end_image)):
            if path is not None:
                try:
                    check_image_file(path)  # before minutes of loading weights
                except ValueError as e:
                    raise PriorswapError(f"{option}: {e}") from None
        from rich.console import Console

        from priorswap.api import load_pair
        from priorswap.cli import quiet_transformers
        from priorswap.media import progress_callback
        from priorswap.provenance import command_line

        from .video import frame_strip, save_video

        quiet_transformers()
        pair = load_pair(model, prior, allow_pickle=allow_pickle, device=device, dtype=weights)
        inputs = {"prompt": prompt, "frames": frames, "fs": fs}
        if pair.task.name == "image-to-video":
            inputs.update(image=image, end_image=end_image, posterior_seed=posterior_seed)
        phi = pair.model.denoiser.lvdm.get("guidance_rescale", 0.0) if rescale is None else rescale
        rule = pair.guidance_for(method, guidance, image_guidance).with_options(rescale=phi)
        err = Console(stderr=True)
        err.print(f"guidance: {rule.name} γ={rule.terms[0].weight:g}, rescale φ={phi:g}, {steps} steps")
        with progress_callback(steps, rule.name, err) as callback:
            result = pair.sample(inputs, guidance=rule, steps=steps, seed=seed, decode=False, eta=eta,
                                 autocast=mixed, callback=callback)
        videos = pair.task.decode_video(result.latents)
        record = {**result.record, "command": command_line()}
        for i, clip in enumerate(videos):
            stem = out.with_suffix("") if len(videos) == 1 else out.with_name(f"{out.stem}-{i}")
            for suffix in (".mp4", ".gif"):
                save_video(clip, stem.with_suffix(suffix), fps=video_fps, record={**record, "index": i})
        from priorswap.media import save_grid

        save_grid(frame_strip(videos), out.with_suffix(".png"), columns=1, record=record)
        typer.echo(f"{rule.name}: {len(videos)} video(s) → {out} (+ .gif, .png)")
