"""InstructPix2Pix: dual CFG reproduces diffusers' StableDiffusionInstructPix2PixPipeline; the dual prior
swap matches its formula by hand, with the prior seeing only the noisy latent and its own "" embedding."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clihelp import run_cli
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tiny import VOCAB, make_tokenizer, tiny_vae
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import priorswap
from priorswap import guidance as G
from priorswap import plugin_manager
from priorswap.api import make_scheduler
from priorswap.errors import PriorswapError
from priorswap.plugin_manager import Plugins
from priorswap.plugins.instruct_pix2pix.denoiser import describe
from priorswap.plugins.instruct_pix2pix.task import target_size
from priorswap.registry import COMMIT, Registry


def make_ip2p_folder(path: Path, seed: int = 4) -> Path:
    """A StableDiffusionInstructPix2PixPipeline folder: a tiny 8-channel UNet, CLIP text encoder,
    tokenizer, VAE (2× downsampling) and DDIM, safetensors."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        clip_sample=False, set_alpha_to_one=False,
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=tiny_vae(), text_encoder=text_encoder, tokenizer=make_tokenizer(path / "_tok"), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def write_png(path: Path, width: int, height: int, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


PLUGINS = "stable_diffusion,instruct_pix2pix"


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    """Only the plugins these tests need, whatever else is installed."""
    import priorswap.plugins.instruct_pix2pix as ip2p
    import priorswap.plugins.stable_diffusion as sd

    found = Plugins()
    found.add(sd, "stable_diffusion")
    found.add(ip2p, "instruct_pix2pix")
    assert not found.failures
    return found


@pytest.fixture
def only_these_plugins(monkeypatch):
    """The CLI discovers plugins itself: restrict it to ours, with a fresh cache."""
    monkeypatch.setenv("PRIORSWAP_PLUGINS", PLUGINS)
    monkeypatch.setattr(plugin_manager, "_CACHE", None)


@pytest.fixture(scope="module")
def ip2p_folder(tmp_path_factory) -> Path:
    return make_ip2p_folder(tmp_path_factory.mktemp("ip2p") / "model")


@pytest.fixture(scope="module")
def square_png(tmp_path_factory) -> Path:
    return write_png(tmp_path_factory.mktemp("img") / "in.png", 16, 16, seed=0)


@pytest.fixture(scope="module")
def wide_png(tmp_path_factory) -> Path:
    return write_png(tmp_path_factory.mktemp("img") / "wide.png", 18, 12, seed=1)


def pipeline_latents(folder, png, prompt, text_scale, image_scale, steps, seed, dtype=torch.float64, eta=0.0):
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    with Image.open(png) as img:
        out = pipe(
            prompt, image=img.convert("RGB"), num_inference_steps=steps, guidance_scale=text_scale,
            image_guidance_scale=image_scale, generator=torch.Generator().manual_seed(seed), output_type="latent",
            eta=eta,
        )
    return out.images


def test_levels_are_the_pipeline_branches():
    """ε = ε_uncond + γT(ε_text − ε_image) + γI(ε_image − ε_uncond), with full = text, partial = image only."""
    text, image, uncond = torch.randn(3, 2, 4, 4, 4, dtype=torch.float64)
    for gamma_t, gamma_i in ((7.5, 1.5), (3.0, 1.0), (1.2, 2.5)):
        rule = G.build("dual-cfg", gamma_t, gamma_i)
        preds = {("model", "full"): text, ("model", "partial"): image, ("model", "null"): uncond}
        expected = uncond + gamma_t * (text - image) + gamma_i * (image - uncond)
        assert torch.allclose(rule.combine(preds, 1.0), expected, atol=1e-12)
        swap = G.build("dual-prior-swap", gamma_t, gamma_i)
        assert {t.branch: t.weight for t in swap.terms}[("prior", "null")] == pytest.approx(1.0 - gamma_i)


@pytest.mark.parametrize(("text_scale", "image_scale"), [(3.0, 1.5), (7.5, 1.0)])
def test_dual_cfg_reproduces_the_pipeline_float64(plugins, ip2p_folder, square_png, text_scale, image_scale):
    ref = pipeline_latents(ip2p_folder, square_png, "a cat", text_scale, image_scale, steps=10, seed=0)
    pair = priorswap.load_pair(str(ip2p_folder), plugins=plugins, dtype=torch.float64)
    out = pair.sample(image=square_png, prompt="a cat", guidance="dual-cfg", scale=text_scale,
                      image_scale=image_scale, steps=10, seed=0, decode=False)
    assert out.latents.dtype == torch.float64 and out.latents.shape == ref.shape == (1, 4, 8, 8)
    assert (out.latents - ref).abs().max().item() < 1e-5
    assert out.forward_calls == {"model": 10}  # the three branches share one batched forward per step


def test_stochastic_ddim_eta_reproduces_the_pipeline(plugins, ip2p_folder, square_png):
    """η = 1: DDIM's step noise comes from the same generator as the initial noise, as in the pipeline."""
    ref = pipeline_latents(ip2p_folder, square_png, "a cat", 3.0, 1.5, steps=10, seed=0, eta=1.0)
    pair = priorswap.load_pair(str(ip2p_folder), plugins=plugins, dtype=torch.float64)
    out = pair.sample(image=square_png, prompt="a cat", guidance="dual-cfg", scale=3.0, image_scale=1.5,
                      steps=10, seed=0, decode=False, eta=1.0)
    assert (out.latents - ref).abs().max().item() < 1e-5
    deterministic = pair.sample(image=square_png, prompt="a cat", guidance="dual-cfg", scale=3.0, image_scale=1.5,
                                steps=10, seed=0, decode=False)
    assert (out.latents - deterministic.latents).abs().max().item() > 1e-2  # η actually changed the run
    with pytest.raises(priorswap.PriorswapError, match="needs the DDIM scheduler"):
        pair.sample(image=square_png, prompt="a cat", steps=2, seed=0, decode=False, eta=1.0, scheduler="euler")


def test_own_size_and_several_prompts_reproduce_the_pipeline(plugins, ip2p_folder, wide_png):
    """resolution=0 keeps the image's size (18×12 → latents 6×9) as the pipeline does; two prompts
    edit the same image, one sample each."""
    prompts = ["a cat", "photo of a dog !"]
    with pytest.warns(FutureWarning):  # the pipeline duplicates one image for two prompts (deprecated)
        ref = pipeline_latents(ip2p_folder, wide_png, prompts, 4.0, 1.5, steps=6, seed=2)
    pair = priorswap.load_pair(str(ip2p_folder), plugins=plugins, dtype=torch.float64)
    out = pair.sample(image=wide_png, prompt=prompts, resolution=0, guidance="dual-cfg", scale=4.0,
                      image_scale=1.5, steps=6, seed=2, decode=False)
    assert out.latents.shape == ref.shape == (2, 4, 6, 9)
    assert (out.latents - ref).abs().max().item() < 1e-5


def test_dual_cfg_float32_is_close_to_the_pipeline(plugins, ip2p_folder, square_png):
    ref = pipeline_latents(ip2p_folder, square_png, "a dog", 7.5, 1.5, steps=10, seed=3, dtype=torch.float32)
    pair = priorswap.load_pair(str(ip2p_folder), plugins=plugins)
    out = pair.sample(image=square_png, prompt="a dog", guidance="dual-cfg", steps=10, seed=3, decode=False)
    assert (out.latents - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_source_latent_is_the_unscaled_vae_mode(plugins, ip2p_folder, wide_png):
    pair = priorswap.load_pair(str(ip2p_folder), plugins=plugins)
    latents = pair.task.source_latents(pair.inputs(image=wide_png, prompt="a cat"))
    # default: the longer side becomes the model's resolution (16): 18×12 → 16×10.67 → 16×10 pixels
    vae = AutoencoderKL.from_pretrained(ip2p_folder, subfolder="vae")
    with Image.open(wide_png) as img:
        pixels = VaeImageProcessor(vae_scale_factor=2).preprocess(img.convert("RGB"), height=10, width=16)
    with torch.no_grad():
        expected = vae.encode(pixels).latent_dist.mode()
    assert latents.shape == (1, 4, 5, 8)
    assert torch.allclose(latents, expected, atol=1e-6)


def test_target_size():
    assert target_size(1024, 768, 512, 8) == (384, 512)
    assert target_size(500, 333, 0, 8) == (328, 496)
    assert target_size(300, 700, 512, 8) == (512, 216)
    with pytest.raises(PriorswapError, match="too small"):
        target_size(4, 100, 0, 8)


def _spy(denoiser, seen):
    forward = denoiser.forward

    def record(x, t, cond):
        seen.append((x.shape, {k: v.clone() for k, v in cond.items()}))
        return forward(x, t, cond)

    denoiser.forward = record


def test_dual_prior_swap_matches_the_formula_by_hand(plugins, ip2p_folder, sd_folder, square_png):
    gamma_t, gamma_i, seed = 3.0, 1.5, 5
    pair = priorswap.load_pair(str(ip2p_folder), plugins=plugins, prior=str(sd_folder), dtype=torch.float64)
    model_seen, prior_seen = [], []
    _spy(pair.model.denoiser, model_seen)
    _spy(pair.prior.denoiser, prior_seen)
    swap = pair.sample(image=square_png, prompt="a cat", guidance="dual-prior-swap", scale=gamma_t,
                       image_scale=gamma_i, steps=1, seed=seed, decode=False)
    assert swap.forward_calls == {"model": 1, "prior": 1}

    # The networks by hand, from the saved folders (diffusers/transformers classes only).
    theta = StableDiffusionInstructPix2PixPipeline.from_pretrained(ip2p_folder, torch_dtype=torch.float64)
    psi_unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet", torch_dtype=torch.float64)

    def embed(folder, prompt, dtype=torch.float64):
        tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        enc = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dtype)
        ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            return enc(ids)[0].to(torch.float64)

    with Image.open(square_png) as img, torch.no_grad():
        pixels = theta.image_processor.preprocess(img.convert("RGB")).to(torch.float64)
        z_image = theta.vae.encode(pixels).latent_dist.mode()
    sched = DDIMScheduler.from_config(theta.scheduler.config)
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    x = randn_tensor((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c_text, c_empty = embed(ip2p_folder, "a cat"), embed(ip2p_folder, "")
    prior_empty = embed(sd_folder, "", torch.float32)  # the SD plugin encodes "" in float32 (cached)
    with torch.no_grad():
        eps_full = theta.unet(torch.cat([x, z_image], 1), t, encoder_hidden_states=c_text).sample
        eps_partial = theta.unet(torch.cat([x, z_image], 1), t, encoder_hidden_states=c_empty).sample
        eps_prior = psi_unet(x, t, encoder_hidden_states=prior_empty).sample
    eps = gamma_t * eps_full + (gamma_i - gamma_t) * eps_partial + (1 - gamma_i) * eps_prior
    expected = sched.step(eps, t, x).prev_sample
    assert (swap.latents - expected).abs().max().item() < 1e-8

    # The prior got the 4-channel noisy latent and its own empty-prompt embedding, nothing else.
    [(prior_shape, prior_cond)] = prior_seen
    assert prior_shape == (1, 4, 8, 8) and set(prior_cond) == {"encoder_hidden_states"}
    assert torch.allclose(prior_cond["encoder_hidden_states"], prior_empty, atol=1e-12)
    # The model got its full and image-only branches (image latent + text), one batched forward.
    [(model_shape, model_cond)] = model_seen
    assert model_shape == (2, 4, 8, 8)
    assert torch.allclose(model_cond["image_latents"], z_image.expand(2, -1, -1, -1), atol=1e-12)
    assert torch.allclose(model_cond["encoder_hidden_states"], torch.cat([c_text, c_empty]), atol=1e-12)

    null = pair.model.denoiser.null_condition()  # (no image, "") at the native size
    assert torch.equal(null["image_latents"], torch.zeros(1, 4, 8, 8, dtype=torch.float64))
    assert torch.allclose(null["encoder_hidden_states"], c_empty, atol=1e-12)

    cfg = pair.sample(image=square_png, prompt="a cat", guidance="dual-cfg", scale=gamma_t,
                      image_scale=gamma_i, steps=1, seed=seed, decode=False)
    assert (swap.latents - cfg.latents).abs().max().item() > 1e-4


def test_defaults_come_from_the_recommended_settings(plugins, ip2p_folder, sd_folder):
    pair = priorswap.load_pair(str(ip2p_folder), plugins=plugins, prior=str(sd_folder))
    rule = pair.guidance_for(None, None)
    assert rule.name == "dual-prior-swap"
    assert {t.branch: t.weight for t in rule.terms} == {
        ("model", "full"): 7.5, ("model", "partial"): 1.5 - 7.5, ("prior", "null"): 1.0 - 1.5
    }
    assert priorswap.load_pair(str(ip2p_folder), plugins=plugins).guidance_for(None, None).name == "dual-cfg"
    with pytest.raises(PriorswapError, match="does not fit"):
        pair.guidance_for("prior-swap", 2.0)


def test_hub_euler_ancestral_config_samples_with_unclipped_ddim(plugins, ip2p_folder, square_png, tmp_path):
    """The hub scheduler is Euler-ancestral; DDIM built from a config without clip_sample must not clip x̂0."""
    folder = tmp_path / "euler"
    shutil.copytree(ip2p_folder, folder)
    EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    ).save_pretrained(folder / "scheduler")
    pair = priorswap.load_pair(str(folder), plugins=plugins)
    ddim = make_scheduler("ddim", pair.model.denoiser.scheduler_config)
    assert not ddim.config.clip_sample and not ddim.config.set_alpha_to_one
    out = pair.sample(image=square_png, prompt="a cat", steps=3, scheduler="native", decode=False)
    assert out.latents.shape == (1, 4, 8, 8) and torch.isfinite(out.latents).all()


def test_pickled_weights_load_only_when_allowed(plugins, ip2p_folder, square_png, tmp_path):
    """MagicBrush's diffusers ports hold .bin weights only."""
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(ip2p_folder)
    pipe.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(PriorswapError, match="allow-pickle"):
        priorswap.load_pair(str(tmp_path / "bin"), plugins=plugins)
    pickled = priorswap.load_pair(str(tmp_path / "bin"), plugins=plugins, allow_pickle=True)
    safe = priorswap.load_pair(str(ip2p_folder), plugins=plugins)
    a, b = (p.sample(image=square_png, prompt="a cat", steps=3, decode=False) for p in (pickled, safe))
    assert torch.equal(a.latents, b.latents)


def test_registry_entries(plugins):
    registry = Registry.load([], plugins.registry_files)
    for key in ("instruct-pix2pix", "magicbrush"):
        entry = registry.entry(key)
        assert entry.plugin == "instruct_pix2pix" and entry.roles == ["model"]
        assert entry.latent_space == "sd-kl-f8" and entry.resolution == 512
        assert COMMIT.match(entry.source.revision)
        rec = entry.recommended
        assert (rec.steps, rec.guidance, rec.image_guidance, rec.scheduler) == (100, 7.5, 1.5, "ddim")
    assert registry.entry("instruct-pix2pix").source.repo == "timbrooks/instruct-pix2pix"


def test_describe_refuses_a_four_channel_unet(sd_folder):
    with pytest.raises(PriorswapError, match="takes 4 input channels"):
        describe(sd_folder)


def test_cli_edits_an_image_with_a_prior(only_these_plugins, tmp_path, capsys, ip2p_folder, sd_folder, square_png):
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "sample", "--model", str(ip2p_folder), "--prior", str(sd_folder),
                           "--image", str(square_png), "--prompt", "make it snowy", "--out", str(out))
    assert code == 0, err
    assert "dual-prior-swap γT=7.5 γI=1.5" in err  # the default rule with a prior, at the recommended scale
    with Image.open(out) as img:
        assert img.size == (16, 16)


def test_cli_reports_a_missing_image(only_these_plugins, tmp_path, capsys, ip2p_folder):
    code, _, err = run_cli(capsys, "sample", "--model", str(ip2p_folder), "--image", str(tmp_path / "none.png"),
                           "--prompt", "x", "--steps", "2", "--out", str(tmp_path / "o.png"))
    message = " ".join(err.split())
    assert code == 2 and f"--image: {tmp_path / 'none.png'} does not exist" in message, err
    assert not (tmp_path / "o.png").exists()


def test_registering_the_plugin_imports_no_torch():
    code = "import sys, priorswap.plugins.instruct_pix2pix; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
