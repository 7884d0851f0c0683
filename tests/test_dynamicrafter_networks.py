"""DynamiCrafter / VideoCrafter2 networks against the reference fixtures (shared/fixtures/dynamicrafter):
the full-size state_dict layout, the tiny networks' outputs, that the check fails when it should, the
CLI, and the checkpoint splitter."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from clihelp import run_cli
from safetensors.torch import load_file, save_file

from priorswap.errors import PriorswapError, WeightsUnavailable
from priorswap.golden import check_fixture

VARIANTS = ["dc256", "dc512", "dc512_interp", "vc2_t2v"]


def fixtures_root() -> Path:
    env = os.environ.get("PRIORSWAP_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "fixtures"


ROOT = fixtures_root() / "dynamicrafter"
pytestmark = pytest.mark.skipif(
    not all((ROOT / v / "fixture.json").is_file() for v in VARIANTS),
    reason=f"DynamiCrafter fixtures not found under {ROOT} (set PRIORSWAP_FIXTURES to the fixtures folder)",
)


def by_name(result):
    return {c.name: c for c in result.comparisons}


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_fixture_passes(variant):
    folder = ROOT / variant
    result = check_fixture(folder)
    assert result.error is None, result.error
    comparisons = by_name(result)
    compare = json.loads((folder / "fixture.json").read_text())["compare"]
    assert set(compare) <= set(comparisons)  # every reference tensor was produced and compared
    assert comparisons["full-size state_dict keys and shapes"].ok, comparisons["full-size state_dict keys and shapes"]
    assert result.ok, [c for c in result.comparisons if not c.ok]
    assert all(comparisons[name].max_abs < 2e-5 for name in compare)  # observed ≈1e-6; tolerance 1e-4


def copy_fixture(tmp_path: Path, variant: str) -> Path:
    folder = tmp_path / variant
    shutil.copytree(ROOT / variant, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def test_check_fails_on_a_perturbed_weight(tmp_path):
    # one temporal-attention value projection off by 5 %: the UNet outputs fail, the Resampler still passes
    folder = copy_fixture(tmp_path, "dc256")
    weights = load_file(folder / "weights.safetensors")
    key = "model.diffusion_model.input_blocks.1.2.transformer_blocks.0.attn1.to_v.weight"
    weights[key] = weights[key] * 1.05
    save_file(weights, folder / "weights.safetensors")
    comparisons = by_name(check_fixture(folder))
    assert comparisons["image_tokens"].ok
    for name in ("output", "output_default_fs", "fallback_output"):
        assert not comparisons[name].ok and comparisons[name].max_abs > 1e-4


@pytest.mark.parametrize(("variant", "fs_name"), [("dc512", "fs"), ("vc2_t2v", "fps")])
def test_check_fails_on_another_fs(tmp_path, variant, fs_name):
    # the fs / fps condition changes the output; the call without it (the default) is unaffected
    folder = copy_fixture(tmp_path, variant)
    io = load_file(folder / "io.safetensors")
    io[fs_name] = io[fs_name] + 1
    save_file(io, folder / "io.safetensors")
    comparisons = by_name(check_fixture(folder))
    assert not comparisons["output"].ok and comparisons["output"].max_abs > 1e-3
    assert comparisons[f"output_default_{fs_name}"].ok


def test_per_frame_image_tokens_matter():
    # reversing the frame order of the image tokens moves the output (the per-frame split is real)
    from priorswap.golden import compare
    from priorswap.plugins.dynamicrafter.golden import load_tiny

    folder = ROOT / "dc512_interp"
    fixture = json.loads((folder / "fixture.json").read_text())
    unet, _ = load_tiny(folder, fixture, json.loads((folder / "config.json").read_text()))
    io = load_file(folder / "io.safetensors")
    text, image = io["context"][:, :77], io["context"][:, 77:]
    frames = io["unet_input"].shape[2]
    reversed_image = image.reshape(2, frames, -1, image.shape[-1]).flip(1).reshape(image.shape)
    with torch.no_grad():
        out = unet(io["unet_input"], io["timesteps"], torch.cat([text, reversed_image], 1), io["fs"])
        # a scalar timestep and an int fs broadcast over the batch
        t0, fs0 = int(io["timesteps"][0]), int(io["fs"][0])
        scalar = unet(io["unet_input"], t0, io["context"], fs0)
        batched = unet(io["unet_input"], torch.full((2,), t0), io["context"], torch.full((2,), fs0))
    assert not compare("output", out, io["output"], 1e-4, 1e-4).ok
    assert torch.allclose(scalar, batched, atol=1e-6)


def test_full_size_check_reports_mismatches():
    from priorswap.plugins.dynamicrafter.golden import full_size_check

    manifest = json.loads((ROOT / "vc2_t2v" / "manifest-full.json").read_text())
    name, ok, detail = full_size_check(manifest)
    assert ok and "1484 tensors" in detail and "1,413,284,420" in detail
    tensors = manifest["tensors"]
    dropped = "model.diffusion_model.init_attn.0.proj_in.bias"
    reshaped = "model.diffusion_model.time_embed.0.weight"
    manifest["tensors"] = {k: ([7, 7] if k == reshaped else v) for k, v in tensors.items() if k != dropped}
    manifest["tensors"]["model.diffusion_model.extra.weight"] = [1]
    name, ok, detail = full_size_check(manifest)
    assert not ok
    assert "missing: model.diffusion_model.extra.weight" in detail
    assert f"unexpected: {dropped}" in detail and f"mis-shaped: {reshaped}" in detail


def test_unet_rejects_unsupported_options():
    from priorswap.plugins.dynamicrafter.unet3d import UNet3D

    params = json.loads((ROOT / "vc2_t2v" / "config.json").read_text())["unet_config"]["params"]
    with pytest.raises(PriorswapError, match="use_relative_position"):
        UNet3D(**{**params, "use_relative_position": True})
    with pytest.raises(PriorswapError, match="exclude each other"):
        UNet3D(**{**params, "fs_condition": True})


def test_cli_check_golden(capsys):
    code, out, err = run_cli(capsys, "check-golden", str(ROOT))
    assert code == 0, out + err
    assert "4 passed, 0 failed" in out and "FAIL" not in out


# ---- checkpoint splitting (convert.py) -------------------------------------------------------------


def synthetic_checkpoint() -> dict[str, torch.Tensor]:
    """The tiny dc256 weights plus stand-ins for the other components a released model.ckpt holds."""
    state = dict(load_file(ROOT / "dc256" / "weights.safetensors"))
    state.update({
        "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 4, 3, 3),
        "cond_stage_model.model.token_embedding.weight": torch.zeros(10, 4),
        "embedder.model.visual.proj": torch.zeros(4, 4),
        "betas": torch.linspace(0.1, 0.2, 5),
        "scale_arr": torch.ones(7),
        "model_ema.decay": torch.tensor(0.999),
    })
    return state


def test_split_checkpoint_loads_into_the_networks():
    from priorswap.plugins.dynamicrafter.convert import split_checkpoint
    from priorswap.plugins.dynamicrafter.golden import build_networks

    state = synthetic_checkpoint()
    # the 256 release names the fs embedding `framestride_embed`
    prefix = "model.diffusion_model."
    for suffix in ("0.weight", "0.bias", "2.weight", "2.bias"):
        state[f"{prefix}framestride_embed.{suffix}"] = state.pop(f"{prefix}fps_embedding.{suffix}")
    for wrapped in ({"state_dict": state, "epoch": 3},
                    {"module": {"_forward_module." + k: v for k, v in state.items()}},
                    state):
        parts = split_checkpoint(wrapped)
        assert set(parts) == {"unet", "image_proj", "vae", "text_encoder", "image_encoder", "schedule"}
        assert set(parts["schedule"]) == {"betas", "scale_arr"}
        assert parts["vae"] == {"decoder.conv_out.weight": state["first_stage_model.decoder.conv_out.weight"]}
        unet, resampler = build_networks(json.loads((ROOT / "dc256" / "config.json").read_text()))
        unet.load_state_dict(parts["unet"], strict=True)
        resampler.load_state_dict(parts["image_proj"], strict=True)
        assert torch.equal(unet.fps_embedding[0].weight, state["model.diffusion_model.framestride_embed.0.weight"])


def test_split_checkpoint_unknown_prefix():
    from priorswap.plugins.dynamicrafter.convert import split_checkpoint

    state = {"model.diffusion_model.out.2.bias": torch.zeros(4), "lora.up.weight": torch.zeros(2)}
    with pytest.raises(PriorswapError, match=r"unknown prefix: lora\.up\.weight"):
        split_checkpoint(state)
    assert split_checkpoint(state, strict=False)["other"] == {"lora.up.weight": state["lora.up.weight"]}


def test_load_checkpoint_pickles_only_with_opt_in(tmp_path):
    from priorswap.plugins.dynamicrafter.convert import load_checkpoint

    state = {"model.diffusion_model.out.2.bias": torch.arange(4.0), "betas": torch.ones(3)}
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(WeightsUnavailable, match="allow_pickle"):
        load_checkpoint(tmp_path / "model.ckpt")
    for parts in (load_checkpoint(tmp_path / "model.ckpt", allow_pickle=True),
                  load_checkpoint(tmp_path / "model.safetensors")):
        assert torch.equal(parts["unet"]["out.2.bias"], torch.arange(4.0)) and set(parts) == {"unet", "schedule"}
    torch.save({"state_dict": state, "config": object()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(WeightsUnavailable, match="weights_only"):
        load_checkpoint(tmp_path / "unsafe.ckpt", allow_pickle=True)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
