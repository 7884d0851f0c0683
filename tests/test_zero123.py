"""Zero-1-to-3: the golden fixture through the plugin (and that the check can fail), cc_projection loading,
prior swap by hand with a tiny Stable Diffusion prior, the CLI, and the registry entries."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from clihelp import run_cli
from safetensors.torch import load_file, save_file

import priorswap
from priorswap.errors import PriorswapError
from priorswap.golden import check_fixture, read_fixture
from priorswap.plugins.zero123 import MODEL_INDEX

FIXTURES = Path(os.environ.get("PRIORSWAP_FIXTURES") or Path(__file__).resolve().parents[2] / "shared" / "fixtures")
TINY = FIXTURES / "zero123" / "tiny"
needs_fixture = pytest.mark.skipif(
    not (TINY / "fixture.json").is_file(),
    reason=f"no Zero-1-to-3 fixture at {TINY} (set PRIORSWAP_FIXTURES to the shared fixtures folder)",
)
CONTEXT_DIM, EMBED_DIM = 16, 12


# ---- a tiny Zero-1-to-3 folder in the hub layout, built from the real classes -----------------------
def make_zero123_folder(path: Path, seed: int = 0, cc_config: dict | None = None) -> Path:
    """unet (8 in-channels), vae (tiny_vae: the same latent space as tests/tiny.py's SD folder), CLIP vision
    encoder with projection, cc_projection (projection.weight/bias), DDIM scheduler, model_index.json."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from tiny import tiny_vae
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=2, norm_num_groups=4,
    )
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=224,
        patch_size=32, projection_dim=EMBED_DIM,
    ))
    cc = torch.nn.Linear(EMBED_DIM + 4, CONTEXT_DIM)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    unet.save_pretrained(path / "unet", safe_serialization=True)
    tiny_vae().save_pretrained(path / "vae", safe_serialization=True)
    encoder.save_pretrained(path / "image_encoder", safe_serialization=True)
    scheduler.save_pretrained(path / "scheduler")
    CLIPImageProcessor().save_pretrained(path / "feature_extractor")
    (path / "cc_projection").mkdir()
    save_file({"projection.weight": cc.weight.detach().contiguous(), "projection.bias": cc.bias.detach()},
              path / "cc_projection" / "diffusion_pytorch_model.safetensors")
    config = {"_class_name": "CCProjection", "in_channel": EMBED_DIM + 4, "out_channel": CONTEXT_DIM}
    (path / "cc_projection" / "config.json").write_text(json.dumps(cc_config or config))
    (path / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    return path


@pytest.fixture(scope="session")
def zero123_folder(tmp_path_factory) -> Path:
    return make_zero123_folder(tmp_path_factory.mktemp("zero123") / "model")


@pytest.fixture(scope="session")
def source_png(tmp_path_factory) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (24, 24, 3), generator=g, dtype=torch.uint8)
    path = tmp_path_factory.mktemp("img") / "in.png"
    Image.fromarray(pixels.numpy()).save(path)
    return path


# ---- golden fixture ---------------------------------------------------------------------------------
@needs_fixture
def test_checker_reproduces_the_fixture():
    result = check_fixture(TINY)
    assert result.error is None, result.error
    report = {c.name: (c.ok, c.max_abs, c.detail) for c in result.comparisons}
    assert set(read_fixture(TINY)["compare"]) <= set(report)
    assert result.ok, report


@needs_fixture
def test_the_check_fails_when_sin_and_cos_are_swapped(monkeypatch):
    """The same check with the azimuth's sin and cos swapped: the conditional branch must leave the tolerance."""
    from priorswap.plugins.zero123 import task

    original = task.pose_vector

    def swapped(polar, azimuth, radius):
        return original(polar, azimuth, radius)[:, [0, 2, 1, 3]]

    monkeypatch.setattr(task, "pose_vector", swapped)
    result = check_fixture(TINY)
    by_name = {c.name: c for c in result.comparisons}
    tol = read_fixture(TINY)["compare"]["eps_cond_step0"]
    assert not result.ok
    assert not by_name["eps_cond_step0"].ok and by_name["eps_cond_step0"].max_abs > 10 * tol
    assert not by_name["cond_embedding"].ok and not by_name["pose"].ok
    assert by_name["image_latents"].ok and by_name["eps_uncond_step0"].ok  # the null branch does not see the pose


@needs_fixture
def test_original_checkpoint_key_names_load_the_same_projection(tmp_path):
    from priorswap.plugins.zero123.denoiser import load_cc_projection

    components = TINY / read_fixture(TINY)["components"]
    folder = tmp_path / "cc_projection"
    folder.mkdir()
    shutil.copy(components / "cc_projection" / "config.json", folder)
    shutil.copy(components / "cc_projection_ldm_keys.safetensors", folder / "diffusion_pytorch_model.safetensors")
    assert set(load_file(folder / "diffusion_pytorch_model.safetensors")) == {"cc_projection.weight",
                                                                               "cc_projection.bias"}
    ldm = load_cc_projection(folder)
    diffusers_names = load_cc_projection(components / "cc_projection")
    assert torch.equal(ldm.weight, diffusers_names.weight) and torch.equal(ldm.bias, diffusers_names.bias)
    io = load_file(TINY / "io.safetensors")
    with torch.no_grad():
        assert (ldm(io["cc_projection_in"]) - io["cond_embedding"]).abs().max() < 1e-6


# ---- cc_projection loading --------------------------------------------------------------------------
def _cc_folder(path: Path, n_in: int, n_out: int, config: dict, suffix: str = ".safetensors") -> Path:
    path.mkdir(parents=True)
    lin = torch.nn.Linear(n_in, n_out)
    state = {"projection.weight": lin.weight.detach().contiguous(), "projection.bias": lin.bias.detach()}
    if suffix == ".safetensors":
        save_file(state, path / "diffusion_pytorch_model.safetensors")
    else:
        torch.save(state, path / "diffusion_pytorch_model.bin")
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_released_config_without_sizes_uses_the_772_to_768_defaults(tmp_path):
    from priorswap.plugins.zero123.denoiser import load_cc_projection

    folder = _cc_folder(tmp_path / "cc", 772, 768, {"_class_name": "CCProjection"})
    cc = load_cc_projection(folder)
    assert type(cc) is torch.nn.Linear and (cc.in_features, cc.out_features) == (772, 768)
    small = _cc_folder(tmp_path / "small", 16, 12, {"_class_name": "CCProjection"})
    with pytest.raises(PriorswapError, match=r"16 → 12 projection but the config says 772 → 768"):
        load_cc_projection(small)


def test_pickled_projection_needs_the_opt_in_once(tmp_path, monkeypatch):
    from priorswap.plugins.zero123.denoiser import load_cc_projection

    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    folder = _cc_folder(tmp_path / "cc", 16, 12, {"in_channel": 16, "out_channel": 12}, suffix=".bin")
    with pytest.raises(PriorswapError, match="--allow-pickle"):
        load_cc_projection(folder)
    first = load_cc_projection(folder, allow_pickle=True)
    assert first.weight.shape == (12, 16)
    # the opted-in run kept a safetensors copy: later runs read it without the flag and without torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the pickle was read again"))
    torch.testing.assert_close(load_cc_projection(folder).weight, first.weight)


def test_a_four_channel_unet_is_not_taken_for_zero123(tmp_path, sd_folder):
    bad = tmp_path / "bad"
    shutil.copytree(sd_folder, bad)
    index = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps({**index, "_class_name": "Zero1to3StableDiffusionPipeline"}))
    with pytest.raises(PriorswapError, match="in_channels is 4"):
        priorswap.load_pair(str(bad))


# ---- task, prior swap and CLI with tiny models ------------------------------------------------------
def test_conditions_follow_the_recipe(zero123_folder, source_png):
    pair = priorswap.load_pair(str(zero123_folder))
    model = pair.model.denoiser
    inputs = pair.task.Inputs(image=source_png, azimuth=30, polar=-20, radius=0.1, count=3)
    cond = pair.task.conditions(inputs, model)
    z, c = cond["full"]["image_latents"], cond["full"]["encoder_hidden_states"]
    assert z.shape == (3, 4, 8, 8) and c.shape == (3, 1, CONTEXT_DIM)
    assert all(float(v.abs().max()) == 0.0 for v in cond["null"].values())  # zeros after the projection
    from priorswap.images import load_image

    image = load_image(source_png, 16)
    assert torch.allclose(z[:1], model.conditioner.vae.vae.encode(image).latent_dist.mode())  # unscaled mode
    pose = torch.tensor([[-0.3490658, 0.5, 0.8660254, 0.1]])
    assert torch.allclose(pair.task.pose(inputs), pose, atol=1e-6)


def test_stable_zero123_pose_carries_the_source_polar_angle(source_png):
    from priorswap.plugins.zero123.task import StableNovelViewInputs, StableNovelViewTask

    task = StableNovelViewTask.__new__(StableNovelViewTask)
    pose = task.pose(StableNovelViewInputs(image=source_png, azimuth=90, polar=15, input_elevation=30))
    assert torch.allclose(pose, torch.tensor([[0.2617994, 1.0, 0.0, 1.0471976]]), atol=1e-6)


def test_prior_swap_replaces_exactly_the_null_term(zero123_folder, sd_folder, source_png):
    """One DDIM step in float64: ε = εψ(x, "") + γ·(εθ([x, z], c) − εψ(x, "")) with ψ a tiny SD prior."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from diffusers.utils.torch_utils import randn_tensor
    from transformers import CLIPTextModel, CLIPTokenizer

    gamma, seed = 4.0, 3
    pair = priorswap.load_pair(str(zero123_folder), prior=str(sd_folder), dtype=torch.float64)
    inputs = {"image": source_png, "azimuth": 60.0, "polar": 10.0}
    swap = pair.sample(inputs, guidance="prior-swap", scale=gamma, steps=1, seed=seed, decode=False)
    cfg = pair.sample(inputs, guidance="cfg", scale=gamma, steps=1, seed=seed, decode=False)
    assert (swap.latents - cfg.latents).abs().max() > 1e-3
    assert swap.forward_calls == {"model": 1, "prior": 1}

    full = pair.task.conditions(pair.inputs(inputs), pair.model.denoiser)["full"]
    theta = UNet2DConditionModel.from_pretrained(zero123_folder / "unet", torch_dtype=torch.float64)
    psi = UNet2DConditionModel.from_pretrained(sd_folder / "unet", torch_dtype=torch.float64)
    tokenizer = CLIPTokenizer.from_pretrained(sd_folder / "tokenizer")
    text = CLIPTextModel.from_pretrained(sd_folder / "text_encoder")
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    sched = DDIMScheduler.from_pretrained(zero123_folder / "scheduler")
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    x = randn_tensor((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        null_text = text(ids)[0].double()
        eps_c = theta(torch.cat([x, full["image_latents"]], 1), t, encoder_hidden_states=full["encoder_hidden_states"])
        eps_u = psi(x, t, encoder_hidden_states=null_text).sample  # the prior sees only the noisy latent
    eps = eps_u + gamma * (eps_c.sample - eps_u)
    expected = sched.step(eps, t, x).prev_sample
    assert (swap.latents - expected).abs().max().item() < 1e-8


def test_cli_samples_a_novel_view_with_a_prior(zero123_folder, sd_folder, source_png, tmp_path, capsys):
    from PIL import Image

    model = tmp_path / "zero123-copy"
    shutil.copytree(zero123_folder, model)
    out = tmp_path / "out.png"
    code, _, err = run_cli(
        capsys, "sample", "--model", str(model), "--prior", str(sd_folder), "--image", str(source_png),
        "--azimuth", "60", "--polar", "0", "--radius", "0", "--steps", "3", "--out", str(out), "--device", "cpu",
    )
    assert code == 0, err
    with Image.open(out) as img:
        assert img.size == (16, 16)
    code, _, err = run_cli(capsys, "sample", "--model", str(model), "--azimuth", "60", "--polar", "0",
                           "--steps", "1", "--device", "cpu", "--out", str(out))
    assert code == 2 and "--image" in err and "required" in err.lower()


def test_a_missing_input_image_is_refused_before_loading(zero123_folder, tmp_path, capsys, monkeypatch):
    import priorswap.api

    monkeypatch.setattr(priorswap.api, "load_pair", lambda *a, **k: pytest.fail("weights loaded before the check"))
    (tmp_path / "notes.png").write_text("not a picture")
    for image, message in ((tmp_path / "missing.png", "does not exist"), (tmp_path, "is a folder, not an image file"),
                           (tmp_path / "notes.png", "is not an image file PIL can read")):
        code, _, err = run_cli(capsys, "sample", "--model", str(zero123_folder), "--image", str(image),
                               "--azimuth", "60", "--polar", "0", "--out", str(tmp_path / "o.png"))
        assert code == 2 and f"--image: {image} {message}" in " ".join(err.split())


# ---- registry ---------------------------------------------------------------------------------------
def test_registry_entries_are_pinned_and_pair_with_sd_priors(monkeypatch):
    from priorswap.loading import compatible_priors

    plugins = priorswap.get_plugins()
    registry = priorswap.Registry.load((), plugins.registry_files)
    for key in ("zero123-xl", "zero123-165000", "zero123-105000"):
        entry = registry.entry(key)
        assert entry.plugin == "zero123" and entry.task == "novel-view" and entry.resolution == 256
        assert entry.source.repo.startswith("kxic/") and re.fullmatch(r"[0-9a-f]{40}", entry.source.revision)
        assert (entry.recommended.steps, entry.recommended.guidance, entry.recommended.scheduler) == (50, 5.0, "ddim")
    plans = {p.prior: p for p in compatible_priors("zero123-xl", registry, plugins)}
    assert plans["sd-2.1-base"].ok and plans["sd-1.5"].ok

    seen = {}

    def fake_download(repo, revision=None, allow_patterns=None, **kwargs):
        seen.update(repo=repo, revision=revision, patterns=allow_patterns)
        raise FileNotFoundError("offline test")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(PriorswapError, match="hf download kxic/zero123-xl"):
        priorswap.load_pair("zero123-xl")
    assert seen["repo"] == "kxic/zero123-xl" and seen["revision"] == registry.entry("zero123-xl").source.revision
    folders = {p.split("/")[0] for p in seen["patterns"] if "/" in p}
    assert folders == {"unet", "scheduler", "vae", "image_encoder", "cc_projection"}
    # Stable Zero123: ashawkey's Zero123Pipeline conversion (safetensors), its own task and projection folder
    stable = registry.entry("stable-zero123")
    assert stable.task == "novel-view-stable" and re.fullmatch(r"[0-9a-f]{40}", stable.source.revision)
    with pytest.raises(PriorswapError, match="hf download ashawkey/stable-zero123-diffusers"):
        priorswap.load_pair("stable-zero123")
    folders = {p.split("/")[0] for p in seen["patterns"] if "/" in p}
    assert folders == {"unet", "scheduler", "vae", "image_encoder", "clip_camera_projection"}


def test_the_zero123pipeline_layout_loads_the_same_model(zero123_folder, source_png, tmp_path):
    """ashawkey's layout (Zero123Pipeline, clip_camera_projection/ holding CLIPCameraProjection's proj.*, fp16)
    samples exactly what the kxic layout of the same weights samples."""
    from safetensors.torch import load_file

    other = tmp_path / "zero123pipeline"
    shutil.copytree(zero123_folder, other)
    shutil.rmtree(other / "cc_projection")
    cc = load_file(zero123_folder / "cc_projection" / "diffusion_pytorch_model.safetensors")
    (other / "clip_camera_projection").mkdir()
    save_file({"proj.weight": cc["projection.weight"], "proj.bias": cc["projection.bias"]},
              other / "clip_camera_projection" / "diffusion_pytorch_model.safetensors")
    (other / "clip_camera_projection" / "config.json").write_text(json.dumps(
        {"_class_name": "CLIPCameraProjection", "embedding_dim": CONTEXT_DIM, "additional_embeddings": EMBED_DIM + 4
         - CONTEXT_DIM}))
    index = json.loads((zero123_folder / "model_index.json").read_text())
    index.pop("cc_projection")
    (other / "model_index.json").write_text(json.dumps(
        {**index, "_class_name": "Zero123Pipeline", "clip_camera_projection": ["zero123", "CLIPCameraProjection"]}))
    inputs = {"image": source_png, "azimuth": 40.0, "polar": 10.0, "radius": 0.0}
    want = priorswap.load_pair(str(zero123_folder)).sample(inputs, steps=3, seed=1, decode=False).latents
    got = priorswap.load_pair(str(other)).sample(inputs, steps=3, seed=1, decode=False).latents
    assert torch.equal(got, want)
