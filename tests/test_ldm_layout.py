"""tests/ldm_layout.py: diffusers/transformers → LDM / OpenAI CLIP layouts, checked by exact round trips through
diffusers' own single-file converters and priorswap's OpenCLIP converter, plus an OpenAI-style CLIP forward."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from ldm_layout import clip_vision_to_openai, unet_to_ldm, vae_to_ldm
from tiny import randomise, tiny_vae

UNET_CONFIGS = {
    # tests/test_zero123.py's tiny Zero-1-to-3 UNet (8 input channels: noisy latents + the source image's latents).
    "zero123": dict(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    ),
    # Stable Diffusion 1.x's shape (4 levels, 2 layers per block: 12 input and 12 output blocks), linear projections.
    "sd1-shape-linear": dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 32, 32), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4, use_linear_projection=True,
    ),
    # 3 levels, 3 layers per block, two transformer layers in each spatial transformer.
    "three-levels": dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=3,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4, transformer_layers_per_block=2,
    ),
}


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


# ---- UNet -------------------------------------------------------------------------------------------------
def tiny_unet(name: str, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return randomise(UNet2DConditionModel(**UNET_CONFIGS[name]), seed)  # every tensor random: swaps show


def unet_round_trip(ldm: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(ldm, config)


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_unet_round_trips_through_diffusers_converter(name):
    unet = tiny_unet(name)
    state = unet.state_dict()
    ldm = unet_to_ldm(state, unet.config)
    assert len(ldm) == len(state) and all(k.startswith("model.diffusion_model.") for k in ldm)
    assert differences(state, unet_round_trip(ldm, unet.config)) == []


def test_unet_ldm_keys_follow_the_sd1_block_numbering():
    """Known facts of SD-1.x checkpoints (down-samplers at input blocks 3/6/9, up-samplers at output blocks
    2 (`.1.conv`, no attention), 5 and 8 (`.2.conv`), no attention in the lowest level), in the tiny SD-1 shape."""
    unet = tiny_unet("sd1-shape-linear")
    ldm = {k.removeprefix("model.diffusion_model."): tuple(v.shape) for k, v in unet_to_ldm(unet.state_dict(),
                                                                                          unet.config).items()}
    expected = {
        "time_embed.0.weight": (32, 8), "time_embed.2.weight": (32, 32), "input_blocks.0.0.weight": (8, 4, 3, 3),
        "input_blocks.1.0.in_layers.0.weight": (8,), "input_blocks.1.0.in_layers.2.weight": (8, 8, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (8, 32), "input_blocks.1.0.out_layers.3.weight": (8, 8, 3, 3),
        "input_blocks.1.1.proj_in.weight": (8, 8), "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (8, 16),
        "input_blocks.3.0.op.weight": (8, 8, 3, 3), "input_blocks.4.0.skip_connection.weight": (16, 8, 1, 1),
        "input_blocks.6.0.op.weight": (16, 16, 3, 3), "input_blocks.7.0.skip_connection.weight": (32, 16, 1, 1),
        "input_blocks.9.0.op.weight": (32, 32, 3, 3), "input_blocks.11.0.out_layers.3.weight": (32, 32, 3, 3),
        "middle_block.0.in_layers.0.weight": (32,), "middle_block.1.proj_out.weight": (32, 32),
        "middle_block.2.emb_layers.1.weight": (32, 32),
        "output_blocks.0.0.skip_connection.weight": (32, 64, 1, 1), "output_blocks.2.1.conv.weight": (32, 32, 3, 3),
        "output_blocks.3.1.norm.weight": (32,), "output_blocks.5.2.conv.weight": (32, 32, 3, 3),
        "output_blocks.8.2.conv.weight": (16, 16, 3, 3), "output_blocks.11.1.transformer_blocks.0.ff.net.2.weight":
        (8, 32), "output_blocks.11.0.skip_connection.weight": (8, 16, 1, 1),
        "out.0.weight": (8,), "out.2.weight": (4, 8, 3, 3),
    }
    assert {k: ldm.get(k) for k in expected} == expected
    absent = ["input_blocks.10.1.norm.weight", "input_blocks.11.1.norm.weight", "input_blocks.12.0.op.weight",
              "output_blocks.0.1.norm.weight", "output_blocks.2.2.conv.weight", "output_blocks.11.2.conv.weight",
              "input_blocks.10.0.skip_connection.weight"]
    assert [k for k in absent if k in ldm] == []


def test_unet_round_trip_notices_a_swap():
    """The tensors are distinct, so two LDM names exchanged come back as two differing diffusers keys."""
    unet = tiny_unet("zero123")
    state = unet.state_dict()
    p = "model.diffusion_model.input_blocks.1.0."
    ldm = swapped(unet_to_ldm(state, unet.config), p + "in_layers.0.weight", p + "out_layers.0.weight")
    assert differences(state, unet_round_trip(ldm, unet.config)) == [
        "differs down_blocks.0.resnets.0.norm1.weight", "differs down_blocks.0.resnets.0.norm2.weight"]


def test_unet_refuses_keys_without_an_ldm_name():
    unet = tiny_unet("zero123")
    state = dict(unet.state_dict(), **{"class_embedding.linear_1.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="class_embedding"):
        unet_to_ldm(state, unet.config)


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


# ---- CLIP image encoder -----------------------------------------------------------------------------------
def tiny_clip_vision(seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=12)
    return randomise(CLIPVisionModelWithProjection(config), seed)


class _QuickGELU(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _ResidualAttentionBlock(torch.nn.Module):
    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(OrderedDict(
            c_fc=torch.nn.Linear(width, mlp), gelu=_QuickGELU(), c_proj=torch.nn.Linear(mlp, width)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class OpenAIVisual(torch.nn.Module):
    """OpenAI CLIP's `VisionTransformer` (parameter names and forward) from plain torch modules: an
    independent reading of the OpenAI layout, `attn` being torch's own `nn.MultiheadAttention`."""

    def __init__(self, width: int, layers: int, heads: int, mlp: int, patch: int, image: int, out_dim: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = torch.nn.Parameter(torch.zeros(width))
        self.positional_embedding = torch.nn.Parameter(torch.zeros((image // patch) ** 2 + 1, width))
        self.ln_pre = torch.nn.LayerNorm(width)
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.ModuleList(
            [_ResidualAttentionBlock(width, heads, mlp) for _ in range(layers)])
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(torch.zeros(width, out_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj


def test_clip_vision_round_trips_through_priorswap_converter():
    from priorswap.plugins.dynamicrafter.openclip import vision_to_transformers

    model = tiny_clip_vision(0)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    openai = clip_vision_to_openai(model.state_dict())
    assert all(k.startswith("visual.") for k in openai)
    assert openai["visual.transformer.resblocks.1.attn.in_proj_weight"].shape == (48, 16)
    assert openai["visual.proj"].shape == (16, 12)
    back = vision_to_transformers(openai)
    assert differences(state, back) == []

    other = tiny_clip_vision(1)
    assert other.load_state_dict(back, strict=False).missing_keys == [
        k for k in other.state_dict() if k.endswith("position_ids")]
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(other(pixel_values=pixels).image_embeds, model(pixel_values=pixels).image_embeds)


def test_clip_vision_round_trip_notices_swapped_projections():
    from priorswap.plugins.dynamicrafter.openclip import vision_to_transformers

    model = tiny_clip_vision(0)
    state = model.state_dict()
    q, k = (f"vision_model.encoder.layers.0.self_attn.{n}_proj.weight" for n in "qk")
    openai = clip_vision_to_openai(swapped(state, q, k))
    assert differences(state, vision_to_transformers(openai)) == [f"differs {k}", f"differs {q}"]


def test_clip_vision_openai_layout_runs_openai_forward():
    """The OpenAI-named weights in an OpenAI-style forward give transformers' `image_embeds`."""
    model = tiny_clip_vision(0)
    reference = OpenAIVisual(width=16, layers=2, heads=2, mlp=32, patch=8, image=32, out_dim=12)
    openai = clip_vision_to_openai(model.state_dict())
    reference.load_state_dict({k.removeprefix("visual."): v for k, v in openai.items()}, strict=True)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values=pixels).image_embeds
        actual = reference.eval()(pixels)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_clip_vision_prefix_and_refusals():
    model = tiny_clip_vision(0)
    openai = clip_vision_to_openai(model.state_dict(), prefix="cond_stage_model.model.visual.")
    assert "cond_stage_model.model.visual.conv1.weight" in openai
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("v_proj.bias")}
    with pytest.raises(ValueError, match="incomplete"):
        clip_vision_to_openai(state)
