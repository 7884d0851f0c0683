"""Versatile Diffusion image variation: golden CFG against VersatileDiffusionImageVariationPipeline, the
blank-image null condition, prior swap with a Stable Diffusion prior by hand, pickled (hub-style) weights,
the hub fetch of only the image-variation folders, the registry entry and the CLI."""

import fnmatch
import shutil
import textwrap
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from clihelp import run_cli
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.deprecated.versatile_diffusion import VersatileDiffusionImageVariationPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tiny import tiny_vae

import priorswap
from priorswap.errors import PriorswapError, WeightsUnavailable
from priorswap.loading import load, resolve
from priorswap.vae import describe_vae

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_vd_folder(path: Path, seed: int = 0) -> Path:
    """A VersatileDiffusionImageVariationPipeline folder: tiny image UNet, CLIP vision encoder (17 tokens of
    width 16), CLIP image processor (32×32 crops), VAE and VD's DDIM scheduler, in safetensors."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=16, attention_head_dim=2,
        norm_num_groups=4,
    )
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=1,
                         num_attention_heads=2, image_size=32, patch_size=8)
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = VersatileDiffusionImageVariationPipeline(
        image_feature_extractor=processor, image_encoder=encoder, image_unet=unet, vae=tiny_vae(), scheduler=scheduler
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def make_pickled_copy(folder: Path, dest: Path) -> Path:
    """The same weights in the hub repo's form: every component a pickled .bin, the CLIP encoder's with the
    `position_ids` buffer that checkpoints of its time still stored."""
    from safetensors.torch import load_file

    pipe = VersatileDiffusionImageVariationPipeline.from_pretrained(folder)
    pipe.save_pretrained(dest, safe_serialization=False)
    enc = dest / "image_encoder"
    for st in enc.glob("*.safetensors"):  # recent transformers write safetensors regardless
        state = load_file(st)
        state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
        torch.save(state, enc / "pytorch_model.bin")
        st.unlink()
    assert not list(dest.rglob("*.safetensors"))
    return dest


@pytest.fixture(scope="session")
def vd_folder(tmp_path_factory) -> Path:
    return make_vd_folder(tmp_path_factory.mktemp("vd") / "model", seed=0)


@pytest.fixture(scope="session")
def source_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "source.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.copy()


def pipeline_latents(folder, image, dtype, scale, steps, seed, count):
    pipe = VersatileDiffusionImageVariationPipeline.from_pretrained(folder, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(open_image(image), guidance_scale=scale, num_inference_steps=steps, num_images_per_prompt=count,
               generator=torch.Generator().manual_seed(seed), output_type="latent")
    return out.images


@pytest.mark.parametrize("scale", [2.0, 5.0])
def test_cfg_reproduces_the_pipeline_float64(vd_folder, source_image, scale):
    ref = pipeline_latents(vd_folder, source_image, torch.float64, scale, steps=10, seed=0, count=2)
    pair = priorswap.load_pair(str(vd_folder), dtype=torch.float64)
    out = pair.sample(image=source_image, count=2, guidance="cfg", scale=scale, steps=10, seed=0, decode=False)
    assert out.latents.shape == ref.shape == (2, 4, 8, 8) and out.latents.dtype == torch.float64
    assert (out.latents - ref).abs().max().item() < 1e-5


def test_cfg_reproduces_the_pipeline_float32(vd_folder, source_image):
    """In float32 the random network's latents grow to O(10): compare relative to their size."""
    ref = pipeline_latents(vd_folder, source_image, torch.float32, 2.0, steps=10, seed=3, count=1)
    pair = priorswap.load_pair(str(vd_folder))
    out = pair.sample(image=source_image, guidance="cfg", scale=2.0, steps=10, seed=3, decode=False)
    assert (out.latents - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_null_condition_is_the_blank_image_encoding(vd_folder, source_image):
    pipe = VersatileDiffusionImageVariationPipeline.from_pretrained(vd_folder)
    negative, positive = pipe._encode_prompt(open_image(source_image), "cpu", 1, True, None).chunk(2)
    pair = priorswap.load_pair(str(vd_folder))
    null = pair.model.denoiser.null_condition()["encoder_hidden_states"]
    assert null.shape == (1, 17, 16)
    assert torch.allclose(null, negative, atol=1e-6) and not torch.allclose(null, positive, atol=1e-3)
    full = pair.task.conditions(pair.inputs(image=source_image, count=3), pair.model.denoiser)["full"]
    assert full["encoder_hidden_states"].shape == (3, 17, 16)
    assert torch.allclose(full["encoder_hidden_states"][2:], positive, atol=1e-6)


def test_a_prior_keeps_no_image_encoder_once_its_null_is_cached(tmp_path, monkeypatch, vd_folder):
    import priorswap.plugins.versatile_diffusion.denoiser as vd

    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    folder = shutil.copytree(vd_folder, tmp_path / "vd")
    plugins = priorswap.get_plugins()
    registry = priorswap.Registry.load((), plugins.registry_files)
    resolved = resolve(str(folder), registry, plugins)
    first = load(resolved, "prior", plugins).denoiser
    assert first.encoder._parts is None  # computed the null, then let the encoder go
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1

    shutil.rmtree(folder / "image_encoder")
    parts = vd.ImageEncoder.parts
    monkeypatch.setattr(vd.ImageEncoder, "parts", lambda self: pytest.fail("the CLIP image encoder was loaded"))
    again = load(resolved, "prior", plugins).denoiser
    assert torch.equal(first.null_condition()["encoder_hidden_states"], again.null_condition()["encoder_hidden_states"])
    monkeypatch.setattr(vd.ImageEncoder, "parts", parts)

    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PriorswapError, match="no image_encoder folder"):
        load(resolved, "prior", plugins)


def test_prior_swap_uses_the_sd_empty_prompt_for_the_null_term_only(vd_folder, sd_folder, source_image):
    gamma, seed, steps = 2.0, 5, 10
    pair = priorswap.load_pair(str(vd_folder), prior=str(sd_folder), dtype=torch.float64)
    assert pair.plan.ok and pair.plan.lines() == []  # same autoencoder and schedule: no adapter
    seen = []
    swap = pair.sample(image=source_image, count=2, guidance="prior-swap", scale=gamma, steps=steps, seed=seed,
                       decode=False, callback=lambda info: seen.append(info.latents))
    cfg = pair.sample(image=source_image, count=2, guidance="cfg", scale=gamma, steps=steps, seed=seed, decode=False)
    assert swap.forward_calls == {"model": steps, "prior": steps}  # θ for the condition, ψ for the null only
    assert (swap.latents - cfg.latents).abs().max() > 1e-3

    # the first step by hand: ε = εψ(x, "") + γ·(εθ(x, CLIP image tokens) − εψ(x, ""))
    theta = VersatileDiffusionImageVariationPipeline.from_pretrained(vd_folder, torch_dtype=torch.float64)
    psi = StableDiffusionPipeline.from_pretrained(sd_folder, torch_dtype=torch.float64, safety_checker=None)
    sched = DDIMScheduler.from_config(theta.scheduler.config)
    sched.set_timesteps(steps)
    t = sched.timesteps[0]
    x = randn_tensor((2, 4, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        image_tokens = theta._encode_prompt(open_image(source_image), "cpu", 2, False, None)
        # the SD plugin encodes its (cached) null condition in float32, whatever the UNet's dtype
        empty = psi.text_encoder.float()(psi.tokenizer("", padding="max_length", return_tensors="pt").input_ids)[0]
        empty = empty.double().expand(2, -1, -1)
        eps_c = theta.image_unet(x, t, encoder_hidden_states=image_tokens).sample
        eps_u = psi.unet(x, t, encoder_hidden_states=empty).sample
    expected = sched.step(eps_u + gamma * (eps_c - eps_u), t, x).prev_sample
    assert (seen[0] - expected).abs().max().item() < 1e-8


def test_pickled_weights_need_allow_pickle(tmp_path, vd_folder, source_image):
    folder = make_pickled_copy(vd_folder, tmp_path / "pickled")
    with pytest.raises(WeightsUnavailable, match=r"only pickled weights.*--allow-pickle"):
        priorswap.load_pair(str(folder))
    pair = priorswap.load_pair(str(folder), allow_pickle=True, dtype=torch.float64)
    out = pair.sample(image=source_image, scale=2.0, steps=4, seed=1)
    ref = priorswap.load_pair(str(vd_folder), dtype=torch.float64).sample(image=source_image, scale=2.0, steps=4,
                                                                          seed=1)
    assert torch.equal(out.latents, ref.latents) and torch.allclose(out.images, ref.images, atol=1e-6)


def hub_registry(tmp_path, folder):
    space = describe_vae(folder / "vae")
    path = tmp_path / "reg.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        models:
          tiny-vd:
            plugin: versatile_diffusion
            roles: [model, prior]
            source: {{repo: tiny-org/tiny-vd, revision: {COMMIT}}}
            latent_space: {{channels: 4, scale: {space["scale"]}, downsample: 2, family: {space["family"]}}}
            schedule: {{beta_schedule: scaled_linear, beta_start: 0.00085, beta_end: 0.012}}
            resolution: 16
            recommended: {{steps: 4, guidance: 2.0}}
    """))
    return str(path)


def test_hub_repo_fetches_only_the_image_variation_folders(tmp_path, monkeypatch, vd_folder, source_image):
    """Like shi-labs/versatile-diffusion: the whole four-flow model, pickles only; a text_unet/ stands in
    for the folders image variation does not need."""
    repo = make_pickled_copy(vd_folder, tmp_path / "repo")
    shutil.copytree(repo / "image_unet", repo / "text_unet")
    calls = []

    def fake_snapshot(repo_id, revision, allow_patterns, **kwargs):
        """Downloads the files matching allow_patterns into one snapshot, like huggingface_hub does."""
        calls.append((sorted({p.split("/")[0] for p in allow_patterns if "/" in p}),
                      any(p.endswith(".bin") for p in allow_patterns)))
        dest = tmp_path / "snapshots" / revision
        for file in repo.rglob("*"):
            name = file.relative_to(repo).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, dest / name)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    reg = hub_registry(tmp_path, vd_folder)
    with pytest.raises(WeightsUnavailable, match="no weights.*--allow-pickle"):  # the .bin files are not fetched
        priorswap.load_pair("tiny-vd", registry_files=[reg], offline=False)
    assert calls == [(["image_encoder", "image_feature_extractor", "image_unet", "scheduler", "vae"], False)]
    assert not list((tmp_path / "snapshots").rglob("*.bin"))
    shutil.rmtree(tmp_path / "snapshots")
    calls.clear()
    pair = priorswap.load_pair("tiny-vd", registry_files=[reg], offline=False, allow_pickle=True)
    assert calls == [(["image_encoder", "image_feature_extractor", "image_unet", "scheduler", "vae"], True)]
    assert not (tmp_path / "snapshots" / COMMIT / "text_unet").exists()
    out = pair.sample(image=source_image, seed=0, decode=False)
    ref = priorswap.load_pair(str(vd_folder)).sample(image=source_image, steps=4, scale=2.0, seed=0, decode=False)
    assert torch.allclose(out.latents, ref.latents, atol=1e-5)

    # as a prior, in a fresh snapshot and cache: its UNet first, the CLIP encoder once for the null condition
    shutil.rmtree(tmp_path / "snapshots")
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache-2"))
    calls.clear()
    priorswap.load_pair(str(vd_folder), prior="tiny-vd", registry_files=[reg], offline=False, allow_pickle=True)
    assert calls == [(["image_unet", "scheduler"], True), (["image_encoder", "image_feature_extractor"], True)]


def test_registry_entry_pairs_with_stable_diffusion_without_weights():
    plugins = priorswap.get_plugins()
    registry = priorswap.Registry.load((), plugins.registry_files)
    entry = registry.entry("versatile-diffusion")
    assert entry.plugin == "versatile_diffusion" and entry.task == "image-variation" and entry.resolution == 512
    assert entry.source.repo == "shi-labs/versatile-diffusion" and len(entry.source.revision) == 40
    assert entry.latent_space == "sd-kl-f8" and entry.parameterization == "epsilon"
    assert entry.schedule.key() == "scaled_linear(0.00085–0.012)/1000"
    assert (entry.recommended.steps, entry.recommended.guidance, entry.recommended.scheduler) == (50, 2.0, "ddim")
    assert "allow-pickle" in entry.description
    family = plugins.family("versatile_diffusion")
    assert "text_unet" not in family.folders["model"] and family.folders["prior"] == ["image_unet", "scheduler"]
    plans = {p.prior: p for p in priorswap.compatible_priors("versatile-diffusion", registry, plugins)}
    assert plans["sd-1.4"].ok and plans["sd-1.4"].adapters == []


def test_task_errors_name_the_problem(vd_folder, sd_folder, source_image, tmp_path):
    pair = priorswap.load_pair(str(vd_folder), prior=str(sd_folder))
    with pytest.raises(ValueError, match="missing.png does not exist"):  # the inputs' validation
        pair.sample(image=tmp_path / "missing.png", steps=1)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png is not an image file"):
        pair.sample(image=tmp_path / "text.png", steps=1)
    with pytest.raises(PriorswapError, match="takes no source image"):  # autoguidance: the SD prior would need it
        pair.sample(image=source_image, guidance="autoguidance", steps=1)
    with pytest.raises(ValueError, match="count"):
        pair.inputs(image="x.png", count=0)


def test_cli_sample_with_a_stable_diffusion_prior(capsys, tmp_path, vd_folder, sd_folder, source_image):
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "sample", "--model", str(vd_folder), "--prior", str(sd_folder),
                           "--image", str(source_image), "--count", "2", "--steps", "3", "--out", str(out))
    assert code == 0, err
    with Image.open(out) as img:
        assert img.size[0] >= 16 and img.size[1] >= 16
    code, _, err = run_cli(capsys, "sample", "--model", str(vd_folder), "--steps", "1", "--out", str(out))
    assert code != 0 and "image" in err
