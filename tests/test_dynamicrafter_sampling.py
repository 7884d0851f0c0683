"""DynamiCrafter / VideoCrafter2 sampling: tiny folders written by convert.save_folder (tiny random UNet3D,
Resampler, CLIP text / vision encoders and VAE from the real classes), loaded through the plugin, sampled with
dual CFG and with the VideoCrafter2-shaped prior; one step checked by hand (prior replaces only ε(∅,∅),
guidance rescale on v, the dynamic latent rescale in DDIM); MP4 / GIF written and read back."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ldm_layout import vae_to_ldm
from PIL import Image
from tiny import VOCAB, randomise, tiny_vae
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from priorswap import guidance as G
from priorswap.api import load_pair, make_scheduler
from priorswap.engine import Sampler
from priorswap.errors import PriorswapError
from priorswap.plugins.dynamicrafter.convert import save_folder, split_checkpoint
from priorswap.plugins.dynamicrafter.presets import PRESETS
from priorswap.plugins.dynamicrafter.resampler import Resampler
from priorswap.plugins.dynamicrafter.unet3d import UNet3D
from priorswap.plugins.dynamicrafter.video import read_video, save_video

FRAMES, PIXELS, CTX = 4, 16, 16  # tiny VAE: 2× downsampling → 8×8 latents
UNET = {
    "in_channels": 8, "out_channels": 4, "model_channels": 32, "attention_resolutions": [1], "num_res_blocks": 1,
    "channel_mult": [1, 2], "dropout": 0.1, "num_head_channels": 8, "transformer_depth": 1, "context_dim": CTX,
    "use_linear": True, "use_checkpoint": True, "temporal_conv": True, "temporal_attention": True,
    "temporal_selfatt_only": True, "use_relative_position": False, "use_causal_attention": False,
    "temporal_length": FRAMES, "addition_attention": True, "image_cross_attention": True, "default_fs": 24,
    "fs_condition": True,
}
VC_UNET = {k: v for k, v in UNET.items() if k not in ("image_cross_attention", "default_fs", "fs_condition")}
VC_UNET.update(in_channels=4, fps_cond=True)
PROJ = {"dim": 16, "depth": 1, "dim_head": 8, "heads": 2, "num_queries": 16, "embedding_dim": 24, "output_dim": CTX,
        "ff_mult": 2, "video_length": FRAMES}


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Zero-initialised layers get noise so every path reaches the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _components(root: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "tok").mkdir()
    (root / "tok" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (root / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(root / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(VOCAB), hidden_size=CTX, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    text.save_pretrained(root / "text_encoder", safe_serialization=True)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8,
        projection_dim=8))
    vision.save_pretrained(root / "image_encoder", safe_serialization=True)
    tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    return {name: root / name for name in ("tokenizer", "text_encoder", "image_encoder", "vae")}


def _folder(root: Path, preset: str, seed: int) -> Path:
    """A released-style checkpoint (prefixed keys) → split_checkpoint → save_folder, with tiny sizes."""
    torch.manual_seed(seed)
    dc = preset.startswith("dynamicrafter")
    unet = UNet3D(**(UNET if dc else VC_UNET))
    _randomise(unet, seed)
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    if dc:
        proj = Resampler(**PROJ)
        _randomise(proj, seed + 1)
        state.update({f"image_proj_model.{k}": v for k, v in proj.state_dict().items()})
    state["betas"] = torch.zeros(1000)
    comps = _components(root / "parts", seed)
    if not dc:
        comps.pop("image_encoder")
    out = save_folder(split_checkpoint(state), root / "model", preset, UNET if dc else VC_UNET,
                      PROJ if dc else None, comps)
    lvdm = out / "scheduler" / "lvdm_config.json"
    cfg = json.loads(lvdm.read_text())
    cfg.update(frames=FRAMES, height=PIXELS, width=PIXELS)
    lvdm.write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dc")
    image = root / "first.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(image)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "last.png")
    return {
        "dc512": _folder(root / "dc512", "dynamicrafter-512", 0),
        "dc256": _folder(root / "dc256", "dynamicrafter-256", 3),
        "vc2": _folder(root / "vc2", "videocrafter2", 1),
        "image": image,
        "last": root / "last.png",
    }


@pytest.fixture(scope="module")
def pair(folders):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return load_pair(str(folders["dc512"]), prior=str(folders["vc2"]))


def test_dual_cfg_and_dual_prior_swap_end_to_end(pair, folders, tmp_path):
    inputs = {"image": folders["image"], "prompt": "a cat", "fs": 24}
    rule = G.dual_prior_swap(1.5, 7.5).with_options(rescale=0.7)
    swap = pair.sample(inputs, guidance=rule, steps=3, seed=1, decode=False)
    base = pair.sample(inputs, guidance=G.dual_cfg(1.5, 7.5).with_options(rescale=0.7), steps=3, seed=1,
                       decode=False)
    again = pair.sample(inputs, guidance=rule, steps=3, seed=1, decode=False)
    assert swap.latents.shape == (1, 4, FRAMES, 8, 8)
    assert torch.isfinite(swap.latents).all() and torch.isfinite(base.latents).all()
    assert torch.equal(swap.latents, again.latents)  # deterministic
    assert (swap.latents - base.latents).abs().max() > 1e-3  # the prior changed the result
    assert swap.forward_calls == {"model": 3, "prior": 3}
    assert base.forward_calls == {"model": 3}

    frames = pair.task.decode_video(swap.latents)
    assert frames.shape == (1, FRAMES, 3, PIXELS, PIXELS)
    strip = pair.task.decode(swap.latents)
    assert strip.shape == (1, 3, PIXELS, FRAMES * PIXELS)
    mp4 = save_video(frames[0], tmp_path / "out.mp4", fps=8)
    gif = save_video(frames[0], tmp_path / "out.gif", fps=8)
    png = save_video(frames[0], tmp_path / "strip.png")
    back = read_video(mp4)
    assert back.shape == (FRAMES, 3, PIXELS, PIXELS)
    assert (back - frames[0]).abs().mean() < 0.1  # lossy H.264, but the same pictures
    assert read_video(mp4, backend="av").shape == back.shape
    with Image.open(gif) as g:
        assert g.n_frames == FRAMES
    with Image.open(png) as p:
        assert p.size == (FRAMES * PIXELS, PIXELS)


def test_video_round_trip_decord(tmp_path):
    pytest.importorskip("decord")
    frames = torch.rand(5, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    path = save_video(frames, tmp_path / "clip.mp4", fps=4)
    back = read_video(path, backend="decord")
    assert back.shape == (5, 3, 48, 64)
    torch.testing.assert_close(back, read_video(path, backend="av"), atol=0.02, rtol=0)
    with pytest.raises(PriorswapError, match="format"):
        save_video(frames, tmp_path / "clip.avi")


def _branch_eps(denoiser, x, t, cond):
    """The network's raw output at integer/fractional timestep t."""
    return denoiser.forward(x, torch.full((x.shape[0],), float(t)), cond)


def test_one_step_by_hand(pair, folders):
    """At the first (ZTSNR-free second) timestep: dual prior swap = dual CFG with only ε(∅,∅) replaced by the
    prior's empty-prompt prediction on the bare noisy latent; guidance rescale acts on the guided v."""
    model, prior = pair.model.denoiser, pair.prior.denoiser
    inputs = pair.inputs({"image": folders["image"], "prompt": "a cat"})
    conds = {("model", k): v for k, v in pair.task.conditions(inputs, model).items()}
    conds[("prior", "null")] = prior.null_condition()
    seen = {}
    original = prior.forward

    def spy(x, t, cond):
        seen["channels"], seen["keys"] = x.shape[1], sorted(cond)
        return original(x, t, cond)

    prior.forward = spy
    sched = make_scheduler("ddim", model.scheduler_config)
    sched.set_timesteps(5)
    t = sched.timesteps[1]
    sigma = model.schedule.t_to_sigma(float(t))
    a, b = 1 / math.sqrt(sigma**2 + 1), sigma / math.sqrt(sigma**2 + 1)
    assert math.isclose(a * a, float(sched.alphas_cumprod[int(t)]), rel_tol=1e-5)
    x = torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(5))
    try:
        routes = pair.routes
        swap = Sampler(routes, conds, G.dual_prior_swap(1.5, 7.5).with_options(rescale=0.7), sched).step_x0(x, sigma, t)
        plain = Sampler(routes, conds, G.dual_prior_swap(1.5, 7.5), sched).step_x0(x, sigma, t)
        cfg = Sampler(routes, conds, G.dual_cfg(1.5, 7.5), sched).step_x0(x, sigma, t)
    finally:
        prior.forward = original
    assert seen == {"channels": 4, "keys": ["context", "fs"]}  # the prior sees the noisy latent only

    with torch.no_grad():
        v_full = _branch_eps(model, x, t, conds[("model", "full")])
        v_part = _branch_eps(model, x, t, conds[("model", "partial")])
        v_null = _branch_eps(model, x, t, conds[("model", "null")])
        t_prior = prior.schedule.sigma_to_t(sigma)  # σ-matching onto VideoCrafter2's schedule
        eps_prior = _branch_eps(prior, x, t_prior, prior.null_condition())
    # ε of each branch (v → ε: a·v + b·x), then the paper's dual guidance in ε
    eps = {k: a * v + b * x for k, v in (("full", v_full), ("partial", v_part), ("null", v_null))}
    guided_cfg = eps["null"] + 1.5 * (eps["partial"] - eps["null"]) + 7.5 * (eps["full"] - eps["partial"])
    guided_swap = eps_prior + 1.5 * (eps["partial"] - eps_prior) + 7.5 * (eps["full"] - eps["partial"])
    x0 = lambda e: (x - b * e) / a  # noqa: E731
    torch.testing.assert_close(cfg, x0(guided_cfg), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(plain, x0(guided_swap), atol=1e-4, rtol=1e-4)
    # only the ε(∅,∅) term differs: swap − cfg = (1 − γI)·(x̂0_prior − x̂0_null)
    torch.testing.assert_close(plain - cfg, (1 - 1.5) * (x0(eps_prior) - x0(eps["null"])), atol=1e-4, rtol=1e-4)
    # guidance rescale 0.7 on the guided v, as the official sampler (std over non-batch dims, unbiased)
    v_guided = (a * x - x0(guided_swap)) / b
    v_rescaled = 0.7 * v_guided * v_full.std() / v_guided.std() + 0.3 * v_guided
    torch.testing.assert_close(swap, a * x - b * v_rescaled, atol=1e-4, rtol=1e-4)
    assert (swap - plain).abs().max() > 1e-4


def test_ztsnr_first_step_and_dynamic_rescale(pair, folders):
    """v-prediction at σ = ∞ (t = 999: x̂0 = −v, ε = x) and the DDIM step with x̂0·s[t_prev]/s[t], ε kept."""
    model = pair.model.denoiser
    inputs = pair.inputs({"image": folders["image"], "prompt": "a cat"})
    conds = {("model", k): v for k, v in pair.task.conditions(inputs, model).items()}
    sched = make_scheduler("ddim", model.scheduler_config)
    steps = 4
    sched.set_timesteps(steps)
    assert [int(t) for t in sched.timesteps] == [999, 749, 499, 249]  # uniform_trailing
    assert math.isinf(model.schedule.t_to_sigma(999.0))
    noise = torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(2))
    seen = []
    Sampler(pair.routes, conds, G.dual_cfg(1.5, 7.5), make_scheduler("ddim", model.scheduler_config)).run(
        noise, steps, callback=lambda info: seen.append(info.latents.clone()))
    with torch.no_grad():
        vs = {k: _branch_eps(model, noise, 999, conds[("model", k)]) for k in ("full", "partial", "null")}
    v = vs["null"] + 1.5 * (vs["partial"] - vs["null"]) + 7.5 * (vs["full"] - vs["partial"])
    x0, eps = -v, noise  # ᾱ = 0
    s = np.concatenate([np.linspace(1, 0.7, 400), np.full(1000, 0.7)])
    a_prev = float(sched.alphas_cumprod[749])
    expected = math.sqrt(a_prev) * x0 * float(s[749] / s[999]) + math.sqrt(1 - a_prev) * eps
    torch.testing.assert_close(seen[0], expected, atol=1e-4, rtol=1e-4)
    assert model.x0_step_scale(249.0, None) == 1.0  # DynamiCrafter: the last step keeps x̂0
    assert pair.prior.denoiser.x0_step_scale(249.0, None) == pytest.approx(1 / s[249])  # VideoCrafter2


FIXTURES = Path(os.environ.get("PRIORSWAP_FIXTURES") or Path(__file__).resolve().parents[2] / "shared" / "fixtures")


@pytest.mark.parametrize(("variant", "preset"), [("dc256", "dynamicrafter-256"), ("dc512", "dynamicrafter-512"),
                                                 ("vc2_t2v", "videocrafter2")])
def test_scheduler_matches_official_grid(variant, preset):
    path = FIXTURES / "dynamicrafter" / variant / "schedule.safetensors"
    if not path.is_file():
        pytest.skip(f"fixture {path} not found")
    from safetensors.torch import load_file

    ref = load_file(path)
    sched = make_scheduler("ddim", PRESETS[preset]["scheduler"])
    np.testing.assert_allclose(sched.alphas_cumprod.double().numpy(), ref["alphas_cumprod"].numpy(), atol=1e-6)
    sched.set_timesteps(50)
    assert sched.timesteps.flip(0).tolist() == ref["ddim50_timesteps"].tolist()
    prev = [float(sched.alphas_cumprod[t - 20]) if t >= 20 else float(sched.final_alpha_cumprod)
            for t in ref["ddim50_timesteps"].tolist()]
    np.testing.assert_allclose(prev, ref["ddim50_alphas_prev"].numpy(), atol=1e-6)
    key = "dynamic_rescale_scale_arr" if "dynamic_rescale_scale_arr" in ref else "use_scale_scale_arr"
    if key in ref:
        from priorswap.plugins.dynamicrafter.denoiser import scale_table

        np.testing.assert_allclose(scale_table(PRESETS[preset]["lvdm"]["base_scale"]), ref[key].numpy(), atol=1e-12)


def test_dc256_cfg_and_interp_errors(folders):
    pair = load_pair(str(folders["dc256"]), prior=str(folders["vc2"]))
    assert pair.model.denoiser.parameterization == "epsilon"
    out = pair.sample({"image": folders["image"], "prompt": ["a cat", "a dog"], "frames": FRAMES}, steps=2,
                      decode=False)
    assert out.guidance.name == "dual-prior-swap" and out.latents.shape == (2, 4, FRAMES, 8, 8)
    assert torch.isfinite(out.latents).all()
    with pytest.raises(PriorswapError, match="interpolation"):
        pair.sample({"image": folders["image"], "prompt": "a cat", "end_image": folders["last"]}, steps=1)


def test_interpolation_concat(pair, folders):
    task = pair.task
    first, last = torch.ones(1, 4, 8, 8), 2 * torch.ones(1, 4, 8, 8)
    c = task.concat_latents(first, last, 5)
    assert c.shape == (1, 4, 5, 8, 8)
    assert c[:, :, 0].eq(1).all() and c[:, :, -1].eq(2).all() and c[:, :, 1:-1].eq(0).all()
    assert task.concat_latents(first, None, 3).eq(1).all()


def test_posterior_seed_draws_from_the_vae_posterior(pair, folders):
    task, model = pair.task, pair.model.denoiser
    base = {"image": folders["image"], "prompt": "a cat", "frames": FRAMES}
    mean = task.conditions(task.Inputs(**base), model)["full"]["concat"]
    a, b, c = (task.conditions(task.Inputs(**base, posterior_seed=s), model)["full"]["concat"] for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded draws
    assert not torch.allclose(a, mean)  # a draw, not the mean
    # the draw is (mean + std·n)·scale with n from the seed, on every frame of the concat latent
    from priorswap.plugins.dynamicrafter.task import read_frame

    dist = task.vae.vae.encode(read_frame(folders["image"], model.height, model.width)).latent_dist
    n = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(1))
    expected = (dist.mean + dist.std * n) * model.latent_space.scale
    assert torch.allclose(a[:, :, 0], expected, atol=1e-6) and torch.allclose(a[:, :, -1], expected, atol=1e-6)
    latents = [pair.sample({**base, "posterior_seed": 1}, steps=2, decode=False).latents for _ in range(2)]
    assert torch.equal(*latents)


def test_autocast_mixed_precision(pair, folders):
    inputs = {"image": folders["image"], "prompt": "a cat", "frames": FRAMES}
    ref = pair.sample(inputs, steps=2, decode=False).latents
    mixed = pair.sample(inputs, steps=2, decode=False, autocast=torch.bfloat16).latents
    assert next(pair.model.denoiser.net.parameters()).dtype == torch.float32  # weights untouched
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    err = (mixed - ref).abs().mean() / ref.abs().mean()
    assert 0 < err < 0.05  # bf16 arithmetic changed the result a little (mean relative error), not a lot


def test_videocrafter_text_to_video(folders):
    pair = load_pair(str(folders["vc2"]))
    assert pair.task.name == "text-to-video"
    out = pair.sample({"prompt": "a dog"}, steps=2, decode=False)
    assert out.guidance.name == "cfg" and out.latents.shape == (1, 4, FRAMES, 8, 8)
    with pytest.raises(PriorswapError, match="prior"):
        load_pair(str(folders["vc2"]), prior=str(folders["dc512"]))


class _OpenClipTower(torch.nn.Module):
    """A reference OpenCLIP transformer with OpenCLIP's parameter names (fused q/k/v in nn.MultiheadAttention)."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        block = lambda: torch.nn.ModuleDict({  # noqa: E731
            "ln_1": torch.nn.LayerNorm(width), "attn": torch.nn.MultiheadAttention(width, heads, batch_first=True),
            "ln_2": torch.nn.LayerNorm(width),
            "mlp": torch.nn.ModuleDict({"c_fc": torch.nn.Linear(width, 4 * width),
                                        "c_proj": torch.nn.Linear(4 * width, width)})})
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.ModuleList([block() for _ in range(layers)])

    def run(self, x, blocks, mask=None):
        for b in blocks:
            h = b["ln_1"](x)
            x = x + b["attn"](h, h, h, attn_mask=mask, need_weights=False)[0]
            x = x + b["mlp"]["c_proj"](torch.nn.functional.gelu(b["mlp"]["c_fc"](b["ln_2"](x))))
        return x


def test_openclip_text_mapping_matches_reference():
    from priorswap.plugins.dynamicrafter.openclip import for_model, text_to_transformers

    torch.manual_seed(0)
    width, vocab, ctx = 16, 10, 77
    ref = _OpenClipTower(width, 3, 2)
    ref.token_embedding = torch.nn.Embedding(vocab, width)
    ref.positional_embedding = torch.nn.Parameter(torch.randn(ctx, width) * 0.1)
    ref.ln_final = torch.nn.LayerNorm(width)
    ref.text_projection = torch.nn.Parameter(torch.randn(width, 8))
    _randomise(ref, 0)
    state = {f"model.{k}": v for k, v in ref.state_dict().items()}
    model = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=4 * width,
                                         num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=ctx,
                                         hidden_act="gelu"))
    model.load_state_dict(for_model(text_to_transformers(state), model), strict=False)
    missing = set(model.state_dict()) - set(for_model(text_to_transformers(state), model))
    assert missing <= {"text_model.embeddings.position_ids", "embeddings.position_ids"}
    ids = torch.randint(0, vocab, (2, ctx), generator=torch.Generator().manual_seed(1))
    mask = torch.full((ctx, ctx), float("-inf")).triu(1)
    with torch.no_grad():
        x = ref.token_embedding(ids) + ref.positional_embedding
        expected = ref.ln_final(ref.run(x, ref.transformer.resblocks[:-1], mask))  # penultimate + ln_final
        out = model(ids, output_hidden_states=True)
        got = getattr(model, "text_model", model).final_layer_norm(out.hidden_states[-2])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_openclip_vision_mapping_matches_reference():
    from priorswap.plugins.dynamicrafter.openclip import vision_to_transformers

    torch.manual_seed(0)
    width, patch, size = 24, 8, 16
    ref = _OpenClipTower(width, 2, 2)
    ref.conv1 = torch.nn.Conv2d(3, width, patch, patch, bias=False)
    ref.class_embedding = torch.nn.Parameter(torch.randn(width))
    ref.positional_embedding = torch.nn.Parameter(torch.randn((size // patch) ** 2 + 1, width) * 0.1)
    ref.ln_pre, ref.ln_post = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
    ref.proj = torch.nn.Parameter(torch.randn(width, 8))
    _randomise(ref, 1)
    state = {f"model.visual.{k}": v for k, v in ref.state_dict().items()}
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2, num_attention_heads=2, image_size=size,
        patch_size=patch, projection_dim=8, hidden_act="gelu"))
    mapped = vision_to_transformers(state)
    model.load_state_dict(mapped, strict=False)
    assert set(model.state_dict()) - set(mapped) <= {"vision_model.embeddings.position_ids"}
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = ref.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([ref.class_embedding.expand(2, 1, -1), x], 1) + ref.positional_embedding
        tokens = ref.run(ref.ln_pre(x), ref.transformer.resblocks)
        out = model(pixel_values=pixels)
    torch.testing.assert_close(out.last_hidden_state, tokens, atol=1e-5, rtol=1e-5)  # what the Resampler reads
    torch.testing.assert_close(out.image_embeds, ref.ln_post(tokens[:, 0]) @ ref.proj, atol=1e-5, rtol=1e-5)


def release_checkpoint(path: Path):
    """A released-style single file (UNet, Resampler, OpenCLIP text + visual towers) at `path` (safetensors, or
    a torch.save pickle for a .ckpt suffix); returns (overrides for convert_release, unet, text tower)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    unet, proj = UNet3D(**UNET), Resampler(**PROJ)
    text = _OpenClipTower(CTX, 2, 2)
    text.token_embedding = torch.nn.Embedding(len(VOCAB), CTX)
    text.positional_embedding = torch.nn.Parameter(torch.randn(77, CTX) * 0.1)
    text.ln_final = torch.nn.LayerNorm(CTX)
    visual = _OpenClipTower(24, 1, 2)
    visual.conv1 = torch.nn.Conv2d(3, 24, 8, 8, bias=False)
    visual.class_embedding = torch.nn.Parameter(torch.randn(24))
    visual.positional_embedding = torch.nn.Parameter(torch.randn(5, 24) * 0.1)
    visual.ln_pre, visual.ln_post = torch.nn.LayerNorm(24), torch.nn.LayerNorm(24)
    visual.proj = torch.nn.Parameter(torch.randn(24, 8))
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"image_proj_model.{k}": v for k, v in proj.state_dict().items()})
    state.update({f"cond_stage_model.model.{k}": v for k, v in text.state_dict().items()})
    state.update({f"embedder.model.visual.{k}": v for k, v in visual.state_dict().items()})
    vae = release_vae()
    state.update(vae_to_ldm(vae.state_dict(), vae.config))  # first_stage_model.* in the LDM layout
    state.update({"betas": torch.zeros(1000), "model_ema.decay": torch.tensor(0.9)})
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save({"state_dict": state}, path)
    overrides = {
        "unet": UNET, "image_proj": PROJ, "vae": {k: v for k, v in vae.config.items() if not k.startswith("_")},
        "text_encoder": {"vocab_size": len(VOCAB), "hidden_size": CTX, "intermediate_size": 4 * CTX,
                         "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
                         "hidden_act": "gelu"},
        "image_encoder": {"hidden_size": 24, "intermediate_size": 96, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "image_size": 16, "patch_size": 8, "projection_dim": 8,
                          "hidden_act": "gelu"},
    }
    return overrides, unet, text


def release_vae():
    """The released-style checkpoint's VAE: tiny, with distinct random values (a mapping that swaps two tensors
    cannot pass)."""
    return randomise(tiny_vae(), seed=5)


def test_convert_release_end_to_end(tmp_path, folders):
    """convert_release → a folder that loads and samples; the encoders hold the mapped OpenCLIP weights."""
    from priorswap.plugins.dynamicrafter.convert import convert_release

    ckpt = tmp_path / "model.safetensors"
    overrides, unet, text = release_checkpoint(ckpt)
    parts = folders["dc512"].parent / "parts"
    out = convert_release(ckpt, "dynamicrafter-512", tmp_path / "converted", tokenizer=parts / "tokenizer",
                          overrides=overrides)
    from safetensors.torch import load_file

    # the converted VAE holds the checkpoint's LDM VAE, through diffusers' LDM → AutoencoderKL key conversion
    converted_vae = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    expected_vae = release_vae().state_dict()
    assert converted_vae.keys() == expected_vae.keys()
    assert all(torch.equal(converted_vae[k], v) for k, v in expected_vae.items())
    lvdm = out / "scheduler" / "lvdm_config.json"
    lvdm.write_text(json.dumps({**json.loads(lvdm.read_text()), "frames": FRAMES, "height": PIXELS, "width": PIXELS}))
    loaded = load_pair(str(out))
    model = loaded.model.denoiser
    torch.testing.assert_close(model.net.state_dict()["out.2.weight"], unet.state_dict()["out.2.weight"])
    q = model.text.parts()[1].state_dict()
    key = next(k for k in q if k.endswith("layers.1.self_attn.v_proj.weight"))
    torch.testing.assert_close(q[key], text.transformer.resblocks[1]["attn"].in_proj_weight[2 * CTX:])
    res = loaded.sample({"image": folders["image"], "prompt": "a cat"}, steps=1, decode=False)
    assert torch.isfinite(res.latents).all()


def test_video_command(folders, tmp_path, capsys):
    from clihelp import run_cli

    out = tmp_path / "clip.mp4"
    code, stdout, stderr = run_cli(
        capsys, "video", "--model", str(folders["dc512"]), "--prior", str(folders["vc2"]), "--image",
        str(folders["image"]), "--prompt", "a cat", "--steps", "2", "--out", str(out))
    assert code == 0, stderr
    assert "dual-prior-swap" in stdout
    assert read_video(out).shape[0] == FRAMES
    with Image.open(out.with_suffix(".gif")) as g:
        assert g.n_frames == FRAMES
    with Image.open(out.with_suffix(".png")) as p:
        assert p.size == (FRAMES * PIXELS, PIXELS)
    from priorswap.provenance import read_record

    for suffix in (".mp4", ".gif", ".png"):  # each file says how it was made
        record = read_record(out.with_suffix(suffix))
        assert record["model"]["id"] == str(folders["dc512"]) and record["prior"]["id"] == str(folders["vc2"])
        assert record["guidance"]["method"] == "dual-prior-swap" and record["steps"] == 2 and record["eta"] == 1.0
        assert record["inputs"]["prompt"] == ["a cat"] and record["command"].startswith("priorswap video --model")
    code, stdout, _ = run_cli(capsys, "info", str(out))
    assert code == 0 and "dual-prior-swap" in stdout and "a cat" in stdout
    code, _, stderr = run_cli(capsys, "video", "--model", str(folders["vc2"]), "--prompt", "a dog", "--image",
                              str(folders["image"]), "--steps", "1", "--out", str(tmp_path / "t.mp4"))
    assert code != 0 and "text-to-video" in stderr
    # mixed precision and a posterior draw: different clip, same files
    code, _, stderr = run_cli(
        capsys, "video", "--model", str(folders["dc512"]), "--image", str(folders["image"]), "--prompt", "a cat",
        "--steps", "2", "--autocast", "bf16", "--posterior-seed", "3", "--out", str(tmp_path / "m.mp4"))
    assert code == 0, stderr
    assert "dual-cfg γT=7.5 γI=1.5" in stderr and (tmp_path / "m.gif").is_file()
    code, _, stderr = run_cli(capsys, "video", "--model", str(folders["dc512"]), "--image", str(folders["image"]),
                              "--prompt", "a cat", "--dtype", "fp8", "--out", str(tmp_path / "x.mp4"))
    assert code == 2 and "--dtype takes fp32, fp16 or bf16" in stderr and not (tmp_path / "x.mp4").exists()


def test_video_writes_what_it_reports_all_or_nothing(folders, tmp_path, capsys, monkeypatch):
    """`--out x.MP4` writes x.MP4 (not x.mp4) and says so; dual guidance shows γT and γI; a failed write leaves
    none of the three files and keeps the previous run's files."""
    import errno

    from clihelp import run_cli

    from priorswap.plugins.dynamicrafter import video

    args = ("video", "--model", str(folders["dc512"]), "--image", str(folders["image"]), "--prompt", "a cat",
            "--steps", "1")
    code, stdout, stderr = run_cli(capsys, *args, "--out", str(tmp_path / "x.MP4"))
    assert code == 0, stderr
    assert "guidance: dual-cfg γT=7.5 γI=1.5, rescale φ=0.7, 1 steps" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.MP4", "x.gif", "x.png"]
    assert stdout.split() == ["dual-cfg:", f"{tmp_path / 'x.MP4'},", f"{tmp_path / 'x.gif'},", str(tmp_path / "x.png")]
    assert read_video(tmp_path / "x.MP4").shape[0] == FRAMES

    def full_disk(frames, fps=8, record=None):
        def write(tmp):
            raise OSError(errno.ENOSPC, "No space left on device", tmp)

        return write

    monkeypatch.setattr(video, "gif_writer", full_disk)
    code, _, stderr = run_cli(capsys, *args, "--out", str(tmp_path / "new" / "y.mp4"))
    stderr = " ".join(stderr.split())
    assert code == 2 and "could not write" in stderr and "y.gif: No space left on device" in stderr, stderr
    assert not (tmp_path / "new").exists()  # nothing written, the folder made for it removed
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, stderr = run_cli(capsys, *args, "--seed", "1", "--out", str(tmp_path / "x.MP4"))
    assert code == 2 and "No space left" in stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first  # the first run's files, untouched


def test_golden_inputs_missing_from_io_are_named():
    """check-golden: a fixture whose io.safetensors lacks `fs` fails naming it (it used to run with the default
    fs and report bare deviations); likewise the UNet input and the Resampler's CLIP tokens."""
    from priorswap.golden import Required
    from priorswap.plugins.dynamicrafter.golden import run_fixture

    unet, proj = UNet3D(**UNET).eval(), Resampler(**PROJ).eval()
    full = {"unet_input": torch.randn(1, 8, FRAMES, 8, 8), "timesteps": torch.tensor([500]),
            "context": torch.randn(1, 77, CTX), "fs": torch.tensor([24]), "clip_image_embeds": torch.randn(1, 5, 24)}
    produced, _ = run_fixture(unet, proj, Required(full, "fx/io.safetensors", "input tensor"),
                              {"output", "output_default_fs", "image_tokens"})
    assert set(produced) == {"output", "output_default_fs", "image_tokens"}
    for name, wanted in (("fs", "output"), ("unet_input", "output"), ("clip_image_embeds", "image_tokens")):
        io = Required({k: v for k, v in full.items() if k != name}, "fx/io.safetensors", "input tensor")
        with pytest.raises(PriorswapError, match=f"fx/io.safetensors lacks the input tensor '{name}'"):
            run_fixture(unet, proj, io, {wanted})


def test_plugin_registration_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, priorswap.plugins.dynamicrafter; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_whole_run_matches_official_ddim_loop(pair, folders):
    """pair.sample (dual CFG, rescale 0.7, 4 DDIM steps) = the official DynamiCrafter p_sample_ddim loop with
    η = 0 written out: v-guidance, rescale on v, ε and x̂0 from v, x̂0·s[t_prev]/s[t], x_prev from (x̂0, ε)."""
    from diffusers.utils.torch_utils import randn_tensor

    model = pair.model.denoiser
    inputs = pair.inputs({"image": folders["image"], "prompt": "a cat"})
    got = pair.sample(inputs, guidance=G.dual_cfg(1.5, 7.5).with_options(rescale=0.7), steps=4, seed=3,
                      decode=False, eta=0.0).latents
    conds = pair.task.conditions(inputs, model)
    ac = make_scheduler("ddim", model.scheduler_config).alphas_cumprod.double()
    s = np.concatenate([np.linspace(1, 0.7, 400), np.full(1000, 0.7)])
    grid = [999, 749, 499, 249]
    x = randn_tensor((1, 4, FRAMES, 8, 8), generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        for i, t in enumerate(grid):
            t_prev = grid[i + 1] if i + 1 < len(grid) else None
            a_t, a_prev = ac[t], (ac[t_prev] if t_prev is not None else ac[0])
            vc, vp, vn = (_branch_eps(model, x.float(), t, conds[k]).double() for k in ("full", "partial", "null"))
            v = vn + 1.5 * (vp - vn) + 7.5 * (vc - vp)
            v = 0.7 * v * vc.std() / v.std() + 0.3 * v
            eps = a_t.sqrt() * v + (1 - a_t).sqrt() * x
            x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * v
            x0 = x0 * (s[t_prev] / s[t] if t_prev is not None else 1.0)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(got.double(), x, atol=2e-4, rtol=2e-4)


def test_interpolation_checkpoint_samples(folders, tmp_path):
    interp = _folder(tmp_path, "dynamicrafter-512-interp", 5)
    pair = load_pair(str(interp), prior=str(folders["vc2"]))
    inputs = pair.inputs({"image": folders["image"], "end_image": folders["last"], "prompt": "a cat"})
    conds = pair.task.conditions(inputs, pair.model.denoiser)
    concat = conds["full"]["concat"]
    assert concat[:, :, 1:-1].eq(0).all() and not torch.equal(concat[:, :, 0], concat[:, :, -1])
    assert conds["full"]["fs"].tolist() == [5]  # the interpolation checkpoint's default fs
    out = pair.sample(inputs, steps=2, decode=False)
    assert torch.isfinite(out.latents).all() and out.latents.shape == (1, 4, FRAMES, 8, 8)
    with pytest.raises(PriorswapError, match="end-image"):
        pair.sample({"image": folders["image"], "prompt": "a cat"}, steps=1)


def test_an_image_prior_frame_by_frame(folders, sd_folder, capsys):
    """A Stable Diffusion UNet as the prior of a video model: each frame is denoised on its own (the
    cross-modality pair), with σ-matching from the zero-SNR v schedule to the prior's ε schedule."""
    from clihelp import run_cli

    code, out, err = run_cli(capsys, "pairs", str(folders["dc512"]), "--prior", str(sd_folder))
    assert code == 0, err
    assert "frame-by-frame" in " ".join(out.split())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        pair = load_pair(str(folders["dc512"]), prior=str(sd_folder))
    seen = []
    original = pair.prior.denoiser.forward

    def spy(x, t, cond):
        seen.append((tuple(x.shape), sorted(cond)))
        return original(x, t, cond)

    pair.prior.denoiser.forward = spy
    inputs = {"image": folders["image"], "prompt": "a cat"}
    swap = pair.sample(inputs, guidance=G.dual_prior_swap(1.5, 7.5), steps=3, seed=0, decode=False)
    cfg = pair.sample(inputs, guidance=G.dual_cfg(1.5, 7.5), steps=3, seed=0, decode=False)
    assert swap.latents.shape == (1, 4, FRAMES, 8, 8) and torch.isfinite(swap.latents).all()
    assert (swap.latents - cfg.latents).abs().max() > 1e-3
    assert seen and all(shape == (FRAMES, 4, 8, 8) and keys == ["encoder_hidden_states"] for shape, keys in seen)


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _checkpoint_entry(tmp_path, file: str, variant: str = "dynamicrafter-512") -> str:
    path = tmp_path / "reg.yaml"
    path.write_text(f"""
version: 1
models:
  tiny-dc:
    plugin: dynamicrafter
    source: {{repo: tiny-org/dc, revision: {HUB_COMMIT}, file: {file}}}
    variant: {variant}
    latent_space: sd-kl-f8
    schedule: {{beta_schedule: scaled_linear, beta_start: 0.00085, beta_end: 0.012, zero_terminal_snr: true}}
    parameterization: v_prediction
    modality: video
    resolution: 512
    task: image-to-video
""")
    return str(path)


@pytest.fixture
def checkpoint_hub(tmp_path, folders, monkeypatch):
    """A Hugging Face cache holding a released-style checkpoint repo, offline; the tokenizer from the tiny parts."""
    import huggingface_hub

    from priorswap.plugins.dynamicrafter import convert
    from priorswap.registry import Source

    repo = tmp_path / "hub" / "models--tiny-org--dc"
    (repo / "snapshots" / HUB_COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(convert, "TOKENIZER_SOURCE", Source(path=str(folders["dc512"].parent / "parts")))
    return repo / "snapshots" / HUB_COMMIT


def test_a_checkpoint_entry_is_converted_once_into_the_cache(checkpoint_hub, tmp_path, monkeypatch, capsys):
    from priorswap.conversion import DONE
    from priorswap.plugins.dynamicrafter import convert

    overrides, unet, _ = release_checkpoint(checkpoint_hub / "model.safetensors")
    monkeypatch.setattr(convert, "CONVERT_OVERRIDES", overrides)
    calls, real = [], convert.convert_release
    monkeypatch.setattr(convert, "convert_release", lambda *a, **k: calls.append(a) or real(*a, **k))
    registry = [_checkpoint_entry(tmp_path, "model.safetensors")]
    pair = load_pair("tiny-dc", registry_files=registry)
    folder = pair.model.folder
    assert len(calls) == 1 and folder.is_relative_to(tmp_path / "cache" / "converted") and (folder / DONE).is_file()
    assert {p.name for p in folder.iterdir()} >= {"unet", "image_proj", "text_encoder", "image_encoder", "tokenizer"}
    assert "converting tiny-org/dc@0123456789:model.safetensors once" in capsys.readouterr().err
    torch.testing.assert_close(pair.model.denoiser.net.state_dict()["out.2.weight"], unet.state_dict()["out.2.weight"])
    # later runs read the converted folder only: the checkpoint may even be gone
    (checkpoint_hub / "model.safetensors").unlink()
    again = load_pair("tiny-dc", registry_files=registry)
    assert len(calls) == 1 and again.model.folder == folder
    tokens = again.model.denoiser.encode_prompts(["a cat"])  # the converted text encoder works (sampling after
    assert torch.isfinite(tokens).all()                       # conversion: test_convert_release_end_to_end)


def test_a_pickled_checkpoint_entry_needs_the_opt_in(checkpoint_hub, tmp_path, monkeypatch):
    from priorswap.errors import WeightsUnavailable
    from priorswap.plugins.dynamicrafter import convert

    overrides, unet, _ = release_checkpoint(checkpoint_hub / "model.ckpt")
    monkeypatch.setattr(convert, "CONVERT_OVERRIDES", overrides)
    registry = [_checkpoint_entry(tmp_path, "model.ckpt")]
    with pytest.raises(WeightsUnavailable, match="pickled checkpoint.*--allow-pickle"):
        load_pair("tiny-dc", registry_files=registry)
    assert not (tmp_path / "cache" / "converted").exists()
    seen, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("weights_only")) or real(*a, **k))
    pair = load_pair("tiny-dc", registry_files=registry, allow_pickle=True)
    assert seen == [True]
    torch.testing.assert_close(pair.model.denoiser.net.state_dict()["out.2.weight"], unet.state_dict()["out.2.weight"])


def test_a_failed_conversion_leaves_nothing(checkpoint_hub, tmp_path):
    release_checkpoint(checkpoint_hub / "model.safetensors")
    with pytest.raises(PriorswapError, match="needs `variant:` naming its preset"):
        load_pair("tiny-dc", registry_files=[_checkpoint_entry(tmp_path, "model.safetensors", "dc-9000")])
    leftovers = [p for p in (tmp_path / "cache" / "converted").rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_pruned_checkpoint_takes_its_encoders_from_an_extra_file(checkpoint_hub, tmp_path, monkeypatch):
    """Kijai/DynamiCrafter_pruned-style: fp16 UNet, Resampler and VAE without the OpenCLIP encoders, which come from
    a whole OpenCLIP model file (bare names, as laion's open_clip_model.safetensors) named in `extra_files`."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from priorswap.plugins.dynamicrafter import convert

    overrides, unet, _ = release_checkpoint(checkpoint_hub / "model.safetensors")
    monkeypatch.setattr(convert, "CONVERT_OVERRIDES", overrides)
    full = load_file(checkpoint_hub / "model.safetensors")
    encoders = ("cond_stage_model.", "embedder.")
    kept = {k: v.half() for k, v in full.items() if not k.startswith(encoders)}
    save_file(kept, checkpoint_hub / "pruned.safetensors")
    clip = {k.removeprefix("cond_stage_model.model."): v for k, v in full.items() if k.startswith("cond_stage_model.")}
    clip |= {k.removeprefix("embedder.model."): v for k, v in full.items() if k.startswith("embedder.")}
    (tmp_path / "laion").mkdir()
    save_file({**clip, "logit_scale": torch.tensor(4.6)}, tmp_path / "laion" / "open_clip_model.safetensors")
    sha = hashlib.sha256((tmp_path / "laion" / "open_clip_model.safetensors").read_bytes()).hexdigest()
    text = Path(_checkpoint_entry(tmp_path, "pruned.safetensors")).read_text()
    extra = f"extra_files: [{{path: {tmp_path / 'laion'}, file: open_clip_model.safetensors, sha256: {sha}}}]"
    (tmp_path / "pruned.yaml").write_text(
        text.replace("file: pruned.safetensors}", f"file: pruned.safetensors, {extra}}}"))
    pruned = load_pair("tiny-dc", registry_files=[str(tmp_path / "pruned.yaml")])
    whole = load_pair(str(checkpoint_hub / "model.safetensors") + "#dynamicrafter-512")
    torch.testing.assert_close(pruned.model.denoiser.net.state_dict()["out.2.weight"].float(),
                               unet.state_dict()["out.2.weight"].half().float())
    prompts = ["a cat"]
    torch.testing.assert_close(pruned.model.denoiser.encode_prompts(prompts),
                               whole.model.denoiser.encode_prompts(prompts), rtol=0, atol=0)
    vision = [load_file(p.model.folder / "image_encoder" / "model.safetensors") for p in (pruned, whole)]
    assert vision[0].keys() == vision[1].keys() and all(torch.equal(vision[0][k], vision[1][k]) for k in vision[0])
    assert "open_clip_model.safetensors" in pruned.model.resolved.entry.source.describe()
    # without the extra file the conversion names what is missing; a wrong extra file is refused by name
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(PriorswapError, match=r"has no text_encoder, image_encoder \(pruned\?\)"):
        load_pair("tiny-dc", registry_files=[_checkpoint_entry(tmp_path, "pruned.safetensors")])
    (tmp_path / "wrong").mkdir()
    save_file({"x": torch.zeros(1)}, tmp_path / "wrong" / "w.safetensors")
    (tmp_path / "wrong.yaml").write_text(text.replace(
        "file: pruned.safetensors}", f"file: pruned.safetensors, extra_files: [{{path: {tmp_path / 'wrong'}, "
        "file: w.safetensors}]}"))
    with pytest.raises(PriorswapError, match="w.safetensors is not a whole OpenCLIP model"):
        load_pair("tiny-dc", registry_files=[str(tmp_path / "wrong.yaml")])
    assert not [p for p in (tmp_path / "cache2").rglob("*") if p.is_file()]


def test_the_shipped_checkpoint_entry_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub

    from priorswap.errors import WeightsUnavailable
    from priorswap.registry import Source

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsUnavailable, match="--allow-pickle"):
        load_pair("dynamicrafter-512")
    with pytest.raises(WeightsUnavailable,
                       match="hf download Doubiiu/DynamiCrafter_512 model.ckpt --revision 9eb874455b79"):
        load_pair("dynamicrafter-512", allow_pickle=True, offline=True)
    with pytest.raises(WeightsUnavailable, match="hf download Doubiiu/DynamiCrafter model.ckpt --revision main"):
        load_pair("dynamicrafter-256", allow_pickle=True, offline=True)  # pinned by the file's sha256
    with pytest.raises(WeightsUnavailable, match="hf download Kijai/DynamiCrafter_pruned "
                                                 "dynamicrafter_1024_fp16_pruned.safetensors --revision 1a427ad086"):
        load_pair("dynamicrafter-1024-pruned", offline=True)  # safetensors: no opt-in needed
    for name, repo, commit in (("dynamicrafter-1024", "Doubiiu/DynamiCrafter_1024", "8a1fc57174"),
                               ("dynamicrafter-512-interp", "Doubiiu/DynamiCrafter_512_Interp", "5163d01e6f"),
                               ("videocrafter2", "VideoCrafter/VideoCrafter2", "7b40798386")):
        with pytest.raises(WeightsUnavailable, match=f"hf download {repo} model.ckpt --revision {commit}"):
            load_pair(name, allow_pickle=True, offline=True)  # pinned by commit and by the file's sha256
    from priorswap.loading import load, resolve
    from priorswap.plugin_manager import get_plugins

    plugins = get_plugins()
    for allow_pickle in (True, False):  # a checkpoint holds its text encoder: no folders to add to the download
        prior = resolve("videocrafter2", plugins.load_registry([]), plugins, allow_pickle=allow_pickle)
        with pytest.raises(WeightsUnavailable) as info:
            load(prior, "prior", plugins, offline=True, allow_pickle=allow_pickle)
        assert "videocrafter2" in str(info.value) and "Until its null condition is cached" not in str(info.value)
    from priorswap.adapters import plan_pair
    from priorswap.loading import resolve
    from priorswap.plugin_manager import get_plugins
    from priorswap.registry import Registry

    plugins = get_plugins()
    registry = Registry.load([], plugins.registry_files)
    plan = plan_pair(*(resolve(n, registry, plugins).spec() for n in ("dynamicrafter-256", "videocrafter2")),
                     plugins.bridges, "continuous")
    assert plan.ok and plan.lines() == []  # the paper's video pair: same latent space and schedule, no adapters
    with pytest.raises(ValueError, match="relative path"):
        Source(repo="a/b", revision=HUB_COMMIT, file="../model.ckpt")


def test_released_checkpoints_are_recognised_by_their_tensor_names():
    """The fixtures' full-size key manifests (the released files' names) → the presets they can be."""
    from priorswap.plugins.dynamicrafter.recognise import describe_dynamicrafter, describe_videocrafter

    if not (FIXTURES / "dynamicrafter").is_dir():
        pytest.skip(f"DynamiCrafter fixtures not found under {FIXTURES}")

    def names(case):
        keys = set(json.loads((FIXTURES / "dynamicrafter" / case / "manifest-full.json").read_text())["tensors"])
        return [f["variant"] for f in describe_dynamicrafter(keys) + describe_videocrafter(keys)]

    assert names("dc256") == ["dynamicrafter-256"]
    assert names("dc512") == names("dc512_interp") == [
        "dynamicrafter-512", "dynamicrafter-1024", "dynamicrafter-512-interp"]
    assert names("vc2_t2v") == ["videocrafter2"]


def test_recognised_fields_agree_with_the_shipped_entries():
    from priorswap.plugin_manager import get_plugins
    from priorswap.plugins.dynamicrafter.recognise import entry_fields
    from priorswap.registry import ModelEntry, Registry, Source

    plugins = get_plugins()
    registry = Registry.load([], plugins.registry_files)
    skip = {"source", "description"}
    names = ("dynamicrafter-256", "dynamicrafter-512", "dynamicrafter-1024", "dynamicrafter-512-interp",
             "videocrafter2", "dynamicrafter-1024-pruned", "dynamicrafter-512-pruned",
             "dynamicrafter-512-interp-pruned")
    lvdm = {n for n, e in registry.models.items() if e.plugin in ("dynamicrafter", "videocrafter")}
    assert lvdm == set(names)
    for name in names:
        shipped = registry.entry(name)
        fields = entry_fields(shipped.variant)
        recognised = ModelEntry(plugin=shipped.plugin, source=Source(path="/x", file="model.ckpt"), **fields)
        assert recognised.model_dump(exclude=skip) == shipped.model_dump(exclude=skip)


def test_a_local_checkpoint_file_is_a_model_reference(tmp_path, folders, monkeypatch, capsys):
    """`--model path/model.ckpt#variant`: recognised by its tensor names, converted once, then read from the cache
    without the opt-in; ambiguous, unknown, mistyped and missing files say what to do."""
    from clihelp import run_cli

    from priorswap.errors import WeightsUnavailable
    from priorswap.plugins.dynamicrafter import convert
    from priorswap.registry import Source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(convert, "TOKENIZER_SOURCE", Source(path=str(folders["dc512"].parent / "parts")))
    ckpt = tmp_path / "dynamicrafter_512_v1" / "model.ckpt"
    ckpt.parent.mkdir()
    overrides, unet, _ = release_checkpoint(ckpt)
    monkeypatch.setattr(convert, "CONVERT_OVERRIDES", overrides)

    with pytest.raises(WeightsUnavailable, match="pickled checkpoint.*--allow-pickle"):
        load_pair(str(ckpt))
    with pytest.raises(PriorswapError, match=r"could be any of dynamicrafter-512, dynamicrafter-1024, "
                                             r"dynamicrafter-512-interp.*model.ckpt#dynamicrafter-512"):
        load_pair(str(ckpt), allow_pickle=True)
    with pytest.raises(PriorswapError, match="cannot be 'videocrafter2'"):
        load_pair(f"{ckpt}#videocrafter2", allow_pickle=True)
    pair = load_pair(f"{ckpt}#dynamicrafter-512", allow_pickle=True)
    assert pair.model.denoiser.parameterization == "v_prediction"
    torch.testing.assert_close(pair.model.denoiser.net.state_dict()["out.2.weight"], unet.state_dict()["out.2.weight"])
    assert pair.model.folder.is_relative_to(tmp_path / "cache" / "converted")
    # a later run needs no opt-in: the description and the converted folder come from the cache
    seen = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(a) or pytest.fail("the pickle was read again"))
    again = load_pair(f"{ckpt}#dynamicrafter-512")
    assert again.model.folder == pair.model.folder and seen == []
    code, stdout, stderr = run_cli(capsys, "pairs", f"{ckpt}#dynamicrafter-512", "--prior", "sd-2.1-base")
    assert code == 0, stderr
    assert "yes" in stdout and "σ-match" in stdout

    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_pair(str(tmp_path / "nowhere" / "model.ckpt"))
    stranger = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(2)}, stranger)
    with pytest.raises(PriorswapError, match="no installed plugin recognises.*tensors start with: encoder"):
        load_pair(str(stranger))


def test_video_refuses_image_models_and_unwritable_outputs_before_loading(folders, tmp_path, capsys, monkeypatch):
    """`priorswap video` checks the model's task, its image files, the output's folder and the device before any
    weights load."""
    from clihelp import run_cli

    import priorswap.api

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        raise PriorswapError("stopped before loading")

    monkeypatch.setattr(priorswap.api, "load_pair", spy)
    out = tmp_path / "v.mp4"
    for extra in ((), ("--image", str(folders["image"]))):
        code, _, stderr = run_cli(capsys, "video", "--model", "toy-digits-class", "--prompt", "a cat", *extra,
                                  "--out", str(out))
        stderr = " ".join(stderr.split())  # rich wraps long lines
        assert code == 2 and "'toy-digits-class' is not a video model" in stderr, stderr
        assert "priorswap sample" in stderr and "text-to-video model" not in stderr
    (tmp_path / "file").write_text("not a folder")
    bad = [tmp_path / "file" / "v.mp4"] + ([Path("/proc/v.mp4")] if Path("/proc").is_dir() else [])
    for target in bad:
        code, _, stderr = run_cli(capsys, "video", "--model", str(folders["dc512"]), "--image", str(folders["image"]),
                                  "--prompt", "a cat", "--out", str(target))
        stderr = " ".join(stderr.split())
        assert code == 2 and "--out" in stderr and str(target.parent) in stderr, stderr
    (tmp_path / "notes.png").write_text("not an image")
    for option, path in (("--image", tmp_path / "missing.png"), ("--end-image", tmp_path / "notes.png")):
        image = str(folders["image"]) if option == "--end-image" else str(path)
        extra = (option, str(path)) if option == "--end-image" else ()
        code, _, stderr = run_cli(capsys, "video", "--model", str(folders["dc512"]), "--image", image, *extra,
                                  "--prompt", "a cat", "--out", str(out))
        stderr = " ".join(stderr.split())
        assert code == 2 and option in stderr and str(path) in stderr, stderr
    code, _, stderr = run_cli(capsys, "video", "--model", str(folders["vc2"]), "--prompt", "a cat", "--out", str(out))
    assert code == 2 and "stopped before loading" in stderr and len(calls) == 1  # only this run got that far
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".v.mp4*"))
    for cuda, device in ((False, "cpu"), (True, "cuda")):  # the default device is sample's: cuda when available
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        calls.clear()
        code, _, stderr = run_cli(capsys, "video", "--model", str(folders["dc512"]), "--image",
                                  str(folders["image"]), "--prompt", "a cat", "--out", str(out))
        assert code == 2 and calls and calls[0]["device"] == device, stderr


def test_a_video_prior_drops_its_text_encoder_after_encoding_the_empty_prompt(folders, tmp_path, monkeypatch):
    """VideoCrafter as a prior needs its CLIP text encoder for "" only, once (then cached on disk): it kept it
    loaded (on the GPU, for the whole session). The model keeps its own for the prompts."""
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cold-cache"))
    pair = load_pair(str(folders["dc512"]), prior=str(folders["vc2"]))
    pair.sample({"image": folders["image"], "prompt": "a cat"}, steps=1, seed=0, decode=False)
    prior, model = pair.prior.denoiser, pair.model.denoiser
    assert prior._text is not None and prior._text._parts is None  # it was loaded, then released
    assert model._text is not None and model._text._parts is not None


def test_video_takes_a_prior_dtype_and_offload(folders, tmp_path, capsys):
    from clihelp import run_cli

    from priorswap.provenance import read_record

    out = tmp_path / "clip.mp4"
    code, _, stderr = run_cli(
        capsys, "video", "--model", str(folders["dc512"]), "--prior", str(folders["vc2"]), "--image",
        str(folders["image"]), "--prompt", "a cat", "--steps", "1", "--prior-dtype", "bf16", "--offload",
        "--device", "cpu", "--out", str(out))
    assert code == 0, stderr
    record = read_record(out)
    assert record["model"]["dtype"] == "float32" and record["prior"]["dtype"] == "bfloat16"
    code, _, stderr = run_cli(capsys, "video", "--model", str(folders["dc512"]), "--image", str(folders["image"]),
                              "--prompt", "a cat", "--prior-dtype", "bf16", "--out", str(tmp_path / "n.mp4"))
    assert code == 2 and "--prior-dtype needs --prior" in stderr and not (tmp_path / "n.mp4").exists()
