"""`priorswap video`: sample a DynamiCrafter / VideoCrafter2 model and write MP4, GIF and a frame-strip PNG.

Every option is checked before any weights load, with the checks `priorswap sample` uses (priorswap.cli,
priorswap.checks), and the three files are written all or nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from priorswap.cli import RegistryOpt
from priorswap.errors import PriorswapError

VIDEO_TASKS = ("image-to-video", "text-to-video")
MAX_VIDEO_FPS = 100  # a GIF times its frames in hundredths of a second


def video_task(model: str, allow_pickle: bool = False, registry: list[str] | None = None) -> tuple[type, Any]:
    """The task class and registry entry of `model` (registry id, folder or checkpoint file), read before any
    weights load; a PriorswapError when it is not a video model."""
    from priorswap.loading import task_and_entry
    from priorswap.plugin_manager import get_plugins

    task, task_cls, entry = task_and_entry(model, registry or [], get_plugins(), allow_pickle=allow_pickle)
    if task not in VIDEO_TASKS:
        raise PriorswapError(f"'{model}' is not a video model (its task is {task}): `priorswap video` takes "
                             "DynamiCrafter / VideoCrafter models; use `priorswap sample` for image models")
    return task_cls, entry


def output_files(out: Path) -> tuple[Path, Path, Path]:
    """The MP4 (`out` as given, its suffix's case kept), the GIF and the frame-strip PNG beside it, each checked
    writable before anything loads."""
    from priorswap import checks

    if out.suffix.lower() != ".mp4":
        raise PriorswapError(f"--out must be an .mp4 file, got {out}")
    checks.writable_file(out, "--out")  # its folder is the folder of the other two
    gif, png = out.with_suffix(".gif"), out.with_suffix(".png")
    for path, what in ((gif, "the GIF"), (png, "the frame-strip PNG")):
        if path.is_dir():
            raise PriorswapError(f"--out {out}: {path}, where {what} beside it goes, is a folder; move it or choose "
                                 "another --out")
    return out, gif, png


def check_numbers(video_fps: int, seed: int, posterior_seed: int | None) -> None:
    """The options of `video` that `sample` does not have, and the seeds, in the options' words."""
    from priorswap import checks

    if not 1 <= video_fps <= MAX_VIDEO_FPS:
        raise PriorswapError(f"--video-fps must be from 1 to {MAX_VIDEO_FPS} (frames per second of the files; a GIF "
                             f"times its frames in 1/100 s), got {video_fps}")
    checks.seed(seed, "--seed")
    if posterior_seed is not None:
        checks.seed(posterior_seed, "--posterior-seed")


def video_task_inputs(task_cls: type, entry: Any, model: str, values: dict[str, Any]) -> Any:
    """The task inputs validated as `sample` validates its options (CLI words: `--frames`, `--fs`, ...), their
    image files checked, and the task's `check_inputs` run against the model's entry (e.g. --end-image)."""
    from priorswap.cli import check_input_files, parse_task_inputs
    from priorswap.images import check_image_file

    if task_cls.name == "image-to-video" and values.get("image") is None:
        raise PriorswapError(f"'{model}' is an image-to-video model: it needs --image (the first frame)")
    if task_cls.name == "text-to-video" and any(values.get(k) is not None for k in ("image", "end_image",
                                                                                     "posterior_seed")):
        raise PriorswapError(f"'{model}' is a text-to-video model: it takes no --image / --end-image / "
                             "--posterior-seed")
    for option, key in (("--image", "image"), ("--end-image", "end_image")):
        if values.get(key) is not None:
            try:
                check_image_file(values[key])  # before minutes of loading weights
            except ValueError as e:
                raise PriorswapError(f"{option}: {e}") from None
    raw = {key: [str(value)] for key, value in values.items() if value is not None}
    inputs = parse_task_inputs(task_cls, raw)
    check_input_files(inputs)
    task_cls.check_inputs(inputs, entry)
    return inputs


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
        frames: Annotated[int | None, typer.Option(help="Number of frames, 1 to 64 (default: the model's).")] = None,
        fs: Annotated[int | None, typer.Option(help="Frame stride / frame rate condition, 1 to 1000.")] = None,
        steps: Annotated[int, typer.Option(help="DDIM steps (1 to the model's training timesteps).")] = 50,
        eta: Annotated[float, typer.Option(help="DDIM η, 0 to 1 (the official samplers use 1).")] = 1.0,
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        video_fps: Annotated[int, typer.Option(help="Playback frame rate of the files, 1 to 100.")] = 8,
        offline: Annotated[
            bool, typer.Option("--offline", help="Never contact the hub; use cached weights only.")] = False,
        allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow pickled weights.")] = False,
        device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")] = None,
        dtype: Annotated[str, typer.Option(help="Model weights dtype: fp32, fp16, bf16.")] = "fp32",
        prior_dtype: Annotated[str | None, typer.Option(help="Prior weights dtype (default: --dtype).")] = None,
        offload: Annotated[bool, typer.Option(
            "--offload", help="Keep networks in CPU memory, move each to the device per forward (accelerate).")
        ] = False,
        autocast: Annotated[
            str | None, typer.Option(help="Run the networks under torch.autocast in fp16/bf16 (as the official "
                                     "scripts on GPU); weights keep --dtype.")
        ] = None,
        posterior_seed: Annotated[
            int | None, typer.Option(help="Encode the frame(s) with a VAE posterior draw from this seed, as the "
                                     "official scripts (default: the posterior mean).")
        ] = None,
        registry: RegistryOpt = None,
    ) -> None:
        """Image-to-video (DynamiCrafter, dual guidance) or text-to-video (VideoCrafter2) to MP4 + GIF + PNG."""
        from priorswap import checks
        from priorswap.cli import (
            check_options_for_model,
            check_options_for_weights,
            check_sampling_options,
            parse_autocast,
            quiet_transformers,
            rule_text,
        )
        from priorswap.dtypes import parse_dtype

        # everything a typo can break, before minutes of loading weights
        mp4, gif, png = output_files(out)
        check_numbers(video_fps, seed, posterior_seed)
        check_sampling_options(method, guidance, image_guidance, rescale, steps, eta, "continuous", None)
        mixed = parse_autocast(autocast)
        weights = parse_dtype(dtype, "--dtype")
        prior_weights = parse_dtype(prior_dtype, "--prior-dtype") if prior_dtype else None
        if prior_weights is not None and prior is None:
            raise PriorswapError("--prior-dtype needs --prior (without a prior, --dtype sets the model's weights)")
        device = checks.device(device)
        task_cls, entry = video_task(model, allow_pickle, registry)
        values = {"prompt": prompt, "frames": frames, "fs": fs, "image": image, "end_image": end_image,
                  "posterior_seed": posterior_seed}
        inputs = video_task_inputs(task_cls, entry, model, values)
        check_options_for_model(entry, task_cls, prior is not None, method, image_guidance, steps, eta, None)
        from rich.console import Console

        from priorswap.api import load_pair
        from priorswap.media import progress_callback, write_together
        from priorswap.provenance import command_line

        from .video import gif_writer, mp4_writer, strip_writer

        quiet_transformers()
        pair = load_pair(model, prior, registry_files=registry or [], offline=offline or None,
                         allow_pickle=allow_pickle, device=device, dtype=weights, prior_dtype=prior_weights,
                         offload=offload)
        check_options_for_weights(pair, steps, eta, None)
        phi = pair.model.denoiser.lvdm.get("guidance_rescale", 0.0) if rescale is None else rescale
        rule = pair.guidance_for(method, guidance, image_guidance).with_options(rescale=phi)
        err = Console(stderr=True)
        err.print(f"guidance: {rule_text(rule)}, rescale φ={phi:g}, {steps} steps")
        with progress_callback(steps, rule_text(rule), err) as callback:
            result = pair.sample(inputs, guidance=rule, steps=steps, seed=seed, decode=False, eta=eta,
                                 autocast=mixed, callback=callback)
        clip = pair.task.decode_video(result.latents)[0]  # one prompt: one video
        record = {**result.record, "command": command_line()}
        # all or nothing: written beside their destinations, renamed only once all three are written
        write_together([(mp4, mp4_writer(clip, video_fps, record={**record, "index": 0})),
                        (gif, gif_writer(clip, video_fps, record={**record, "index": 0})),
                        (png, strip_writer(clip, record))])
        typer.echo(f"{rule.name}: {mp4}, {gif}, {png}")
