"""tests/ldm_layout.py: a diffusers VAE → the LDM (`first_stage_model.`) layout, checked by exact round trips
through diffusers' own single-file converter and against the LDM block numbering."""

from __future__ import annotations

import pytest
import torch
from ldm_layout import vae_to_ldm
from tiny import randomise, tiny_vae


def differences(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> list[str]:
    """Keys missing from `actual`, extra in it, or whose tensors are not exactly equal (shape, dtype, values)."""
    out = [f"missing {k}" for k in expected.keys() - actual.keys()]
    out += [f"extra {k}" for k in actual.keys() - expected.keys()]
    out += [f"differs {k}" for k in expected.keys() & actual.keys()
            if expected[k].dtype != actual[k].dtype or not torch.equal(expected[k], actual[k])]
    return sorted(out)


def swapped(state: dict[str, torch.Tensor], a: str, b: str) -> dict[str, torch.Tensor]:
    out = dict(state)
    out[a], out[b] = state[b], state[a]
    return out


# ---- VAE --------------------------------------------------------------------------------------------------
def three_level_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=2,
        latent_channels=4, norm_num_groups=4, sample_size=16,
    )


VAES = {"tiny": tiny_vae, "three-levels": three_level_vae}


def vae_round_trip(ldm: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(ldm, config)


@pytest.mark.parametrize("name", sorted(VAES))
def test_vae_round_trips_through_diffusers_converter(name):
    vae = randomise(VAES[name](), 1)
    state = vae.state_dict()
    ldm = vae_to_ldm(state, vae.config)
    assert len(ldm) == len(state) and all(k.startswith("first_stage_model.") for k in ldm)
    assert differences(state, vae_round_trip(ldm, vae.config)) == []


def test_vae_ldm_layout():
    """Decoder levels numbered by resolution (up.0 is the full-resolution one, without an up-sampler) and the
    mid-block attention as 1×1 convolutions."""
    vae = randomise(three_level_vae(), 1)
    ldm = {k.removeprefix("first_stage_model."): tuple(v.shape) for k, v in vae_to_ldm(vae.state_dict(),
                                                                                      vae.config).items()}
    expected = {
        "encoder.conv_in.weight": (8, 3, 3, 3), "encoder.down.0.block.1.conv2.weight": (8, 8, 3, 3),
        "encoder.down.0.downsample.conv.weight": (8, 8, 3, 3), "encoder.down.1.block.0.nin_shortcut.weight":
        (16, 8, 1, 1), "encoder.mid.block_1.norm1.weight": (16,), "encoder.mid.attn_1.q.weight": (16, 16, 1, 1),
        "encoder.mid.attn_1.proj_out.weight": (16, 16, 1, 1), "encoder.mid.attn_1.norm.weight": (16,),
        "encoder.mid.block_2.conv2.weight": (16, 16, 3, 3), "encoder.norm_out.weight": (16,),
        "encoder.conv_out.weight": (8, 16, 3, 3), "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1), "decoder.conv_in.weight": (16, 4, 3, 3),
        "decoder.mid.attn_1.v.weight": (16, 16, 1, 1), "decoder.up.2.block.2.conv1.weight": (16, 16, 3, 3),
        "decoder.up.2.upsample.conv.weight": (16, 16, 3, 3), "decoder.up.1.upsample.conv.weight": (16, 16, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.weight": (8, 16, 1, 1), "decoder.norm_out.weight": (8,),
        "decoder.conv_out.weight": (3, 8, 3, 3),
    }
    assert {k: ldm.get(k) for k in expected} == expected
    absent = ["decoder.up.0.upsample.conv.weight", "encoder.down.2.downsample.conv.weight",
              "decoder.up.3.block.0.conv1.weight", "decoder.up.2.block.0.nin_shortcut.weight"]
    assert [k for k in absent if k in ldm] == []


def test_vae_round_trip_notices_a_swap():
    vae = randomise(tiny_vae(), 1)
    state = vae.state_dict()
    p = "first_stage_model.encoder.mid.attn_1."
    ldm = swapped(vae_to_ldm(state, vae.config), p + "q.weight", p + "k.weight")
    assert differences(state, vae_round_trip(ldm, vae.config)) == [
        "differs encoder.mid_block.attentions.0.to_k.weight", "differs encoder.mid_block.attentions.0.to_q.weight"]
