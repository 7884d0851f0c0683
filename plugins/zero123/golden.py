"""`priorswap check-golden` for Zero-1-to-3 pipeline fixtures (shared/fixtures/zero123/*).

The fixture's components folder is loaded through the plugin's own path (`priorswap.load_pair` on
the local folder, offline), the input image goes in as a PNG file like a user's would, and the
run is plain CFG through priorswap's engine with DDIM. The step-0 network outputs are the
denoiser evaluated on the exact input the engine gave its first forward pass (recorded), once with
the full and once with the null condition.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from priorswap import PriorswapError


def _write_png(pixels: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        shape = tuple(pixels.shape)
        raise PriorswapError(f"the fixture's input image must be uint8 HWC RGB, got {pixels.dtype} {shape}")
    Image.fromarray(pixels.numpy()).save(path)  # PNG is lossless: the task reads back the same bytes
    return path


def _recording(denoiser) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Wraps the instance's `forward` to record (x, t) of every call; the engine is left as it is."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    inner = denoiser.forward

    def forward(x, t, cond):
        calls.append((x.detach().clone(), t.detach().clone()))
        return inner(x, t, cond)

    denoiser.forward = forward
    return calls


def check(folder: Path, fixture: dict):
    """Runs the fixture's `call` and returns the tensors named in its `compare` (plus extra checks)."""
    import priorswap
    from priorswap.golden import Produced, call_of, read_inputs

    call = call_of(folder, fixture)  # a missing field or tensor is named, not a bare KeyError
    io = read_inputs(folder)
    if float(call.get("eta", 0.0)) != 0.0:
        raise PriorswapError(f"the engine's DDIM runs with eta = 0; the fixture asks for eta = {call['eta']}")
    pair = priorswap.load_pair(str(Path(folder) / fixture.get("components", "components")), offline=True)
    model = pair.model.denoiser
    if (call["height"], call["width"]) != (model.resolution, model.resolution):
        raise PriorswapError(
            f"the fixture samples {call['height']}×{call['width']} but the components' native size is "
            f"{model.resolution}×{model.resolution} (the task samples at the model resolution)"
        )
    steps, seed = int(call["num_inference_steps"]), int(call["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        image = _write_png(io[call["input_image"]], Path(tmp) / "input.png")
        inputs = pair.task.Inputs(image=image, azimuth=call["azimuth_deg"], polar=call["polar_deg"],
                                  radius=call.get("radius", 0.0))
        conditions = pair.task.conditions(inputs, model)
        calls = _recording(model)
        timesteps: list[float] = []
        try:
            result = pair.sample(inputs, guidance="cfg", scale=float(call["guidance_scale"]), steps=steps,
                                 seed=seed, scheduler="ddim", decode=False,
                                 callback=lambda info: timesteps.append(info.timestep))
        finally:
            del model.forward  # drop the instance wrapper
    first_batch, first_t = calls[0]  # the engine's first forward: x_T once per guidance branch
    x_first = first_batch[: result.latents.shape[0]]
    t = first_t[: x_first.shape[0]]
    with torch.no_grad():
        eps_cond = model.forward(x_first, t, conditions["full"])
        eps_uncond = model.forward(x_first, t, _expand(conditions["null"], x_first.shape[0]))
    tensors = {
        "cond_embedding": conditions["full"]["encoder_hidden_states"],
        "image_latents": conditions["full"]["image_latents"],
        "eps_cond_step0": eps_cond,
        "eps_uncond_step0": eps_uncond,
        "final_latents": result.latents,
    }
    checks = [_same_inputs(first_batch, x_first)]
    if "timesteps" in io:
        ref = [int(t) for t in io["timesteps"]]
        got = [int(round(t)) for t in timesteps]
        checks.append(("timesteps", got == ref, "" if got == ref else f"{got} vs reference {ref}"))
    if "pose" in io:
        pose = pair.task.pose(inputs)
        dev = (pose - io["pose"]).abs().max().item()
        checks.append(("pose", dev <= 1e-7, f"max |a−b| {dev:.3g}"))
    return Produced({k: v.float().cpu() for k, v in tensors.items()}, checks)


def _expand(cond: dict, batch: int) -> dict:
    return {k: v.expand(batch, *v.shape[1:]) for k, v in cond.items()}


def _same_inputs(batch: torch.Tensor, first: torch.Tensor) -> tuple[str, bool, str]:
    """The engine's first forward holds one copy of x_T per guidance branch: all copies must agree."""
    copies = batch.reshape(-1, *first.shape)
    ok = bool((copies == first).all())
    return "step-0 input shared by the branches", ok, "" if ok else "the branches saw different x_T"
