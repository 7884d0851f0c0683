"""Half precision on the CPU, bfloat16 standing in for the GPU's fp16/bf16: every image family, alone and with a
prior of another family, samples with its weights cast (`dtype=`), with mixed precision (`autocast=`) and with
a prior in another dtype than the model's (`prior_dtype=`); every tensor a network receives is in its weights'
dtype (no condition silently left in float32), outputs are finite, of the model's dtype, and decode to images.
float16 passes the same tests on the CPU too; bfloat16 is the one CPU proxy kept, to stay fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_instruct_pix2pix import make_ip2p_folder, write_png
from test_pixart import make_pixart_folder
from test_versatile_diffusion import make_vd_folder
from test_zero123 import make_zero123_folder

import priorswap

BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def folders(tmp_path_factory, dit_folder, sd_folder) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("half")
    return {
        "dit": dit_folder,
        "sd": sd_folder,
        "zero123": make_zero123_folder(root / "zero123"),
        "ip2p": make_ip2p_folder(root / "ip2p"),
        "vd": make_vd_folder(root / "vd"),
        "pixart": make_pixart_folder(root / "pixart", seed=4),
        # sample_size 128: the transformer takes the resolution / aspect-ratio micro-conditions too
        "pixart-1024": make_pixart_folder(root / "pixart-1024", seed=5, sample_size=128, patch_size=8),
    }


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return write_png(tmp_path_factory.mktemp("half-img") / "in.png", 16, 16, seed=0)


def inputs_for(family: str, image: Path) -> tuple[dict, tuple[int, ...]]:
    """Task inputs for a model family and the latent shape they sample."""
    return {
        "dit": ({"class_label": [2, 5]}, (2, 4, 8, 8)),
        "zero123": ({"image": image, "azimuth": 30.0, "polar": -20.0, "radius": 0.1}, (1, 4, 8, 8)),
        "ip2p": ({"image": image, "prompt": "a cat"}, (1, 4, 8, 8)),
        "vd": ({"image": image, "count": 2}, (2, 4, 8, 8)),
    }[family]


PAIRS = [
    ("zero123", None),
    ("zero123", "sd"),
    ("ip2p", None),
    ("ip2p", "sd"),
    ("vd", None),
    ("vd", "sd"),
    ("dit", None),
    ("dit", "sd"),
    ("dit", "pixart"),
    ("dit", "pixart-1024"),
]


def network_inputs(pair) -> list[tuple[torch.dtype, torch.dtype]]:
    """Records (weights' dtype, input's dtype) for every floating-point tensor of two or more dimensions that
    reaches a network (the latents, the conditions; not the 1-D timesteps) during the pair's sampling."""
    seen: list[tuple[torch.dtype, torch.dtype]] = []

    def record(module, args, kwargs):
        for value in (*args, *kwargs.values(), *(kwargs.get("added_cond_kwargs") or {}).values()):
            if torch.is_tensor(value) and value.is_floating_point() and value.dim() >= 2:
                seen.append((module.dtype, value.dtype))

    for loaded in {id(x): x for x in (pair.model, pair.prior) if x is not None}.values():
        loaded.denoiser.net.register_forward_pre_hook(record, with_kwargs=True)
    return seen


def sample(folders, image, model, prior, guidance=None, autocast=None, **options):
    pair = priorswap.load_pair(str(folders[model]), prior=str(folders[prior]) if prior else None, **options)
    inputs, shape = inputs_for(model, image)
    seen = network_inputs(pair)
    out = pair.sample(inputs, guidance=guidance, scale=2.0, steps=2, seed=0, autocast=autocast)
    assert seen and all(weights == given for weights, given in seen), f"inputs in another dtype: {set(seen)}"
    return pair, out, shape


def check(out, shape, dtype):
    assert out.latents.shape == shape and out.latents.dtype == dtype
    assert torch.isfinite(out.latents.float()).all()
    assert out.images is not None and out.images.shape == (shape[0], 3, 16, 16)
    assert torch.isfinite(out.images).all() and out.images.min() >= 0 and out.images.max() <= 1


@pytest.mark.parametrize(("model", "prior"), PAIRS)
def test_bfloat16_weights_sample(folders, image, model, prior):
    pair, out, shape = sample(folders, image, model, prior, dtype=BF16)
    assert pair.model.denoiser.dtype == BF16 and (prior is None or pair.prior.denoiser.dtype == BF16)
    check(out, shape, BF16)


@pytest.mark.parametrize(("model", "prior"), PAIRS)
def test_bfloat16_autocast_samples(folders, image, model, prior):
    _, out, shape = sample(folders, image, model, prior, autocast=BF16)
    check(out, shape, torch.float32)


@pytest.mark.parametrize(("model", "prior"), [p for p in PAIRS if p[1]])
@pytest.mark.parametrize(("dtype", "prior_dtype"), [(BF16, torch.float32), (torch.float32, BF16)])
def test_prior_in_another_dtype_samples(folders, image, model, prior, dtype, prior_dtype):
    pair, out, shape = sample(folders, image, model, prior, dtype=dtype, prior_dtype=prior_dtype)
    assert pair.model.denoiser.dtype == dtype and pair.prior.denoiser.dtype == prior_dtype
    check(out, shape, dtype)


@pytest.mark.parametrize("model", ["zero123", "vd", "dit"])
@pytest.mark.parametrize(("dtype", "prior_dtype"), [(BF16, torch.float32), (torch.float32, BF16)])
def test_autoguidance_by_a_copy_in_another_dtype_samples(folders, image, model, dtype, prior_dtype):
    pair, out, shape = sample(
        folders, image, model, model, guidance="autoguidance", dtype=dtype, prior_dtype=prior_dtype
    )
    assert pair.prior.denoiser is not pair.model.denoiser and pair.prior.denoiser.dtype == prior_dtype
    check(out, shape, dtype)
