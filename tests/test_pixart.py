"""PixArt-α as a prior: golden null branch against PixArtAlphaPipeline, PixArt as the prior of a DiT,
the on-disk null-condition cache (T5 not needed again), the hub fetch on a cache miss, the registry and CLI."""

import json
import shutil
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
from clihelp import run_cli
from tiny import tiny_vae

import priorswap
from priorswap.errors import PriorswapError
from priorswap.loading import load, resolve
from priorswap.vae import describe_vae

T5_VOCAB = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [
    (f"▁{w}", -3.0) for w in ("a", "cat", "dog", "photo", "of", "red", "house")
]
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def make_pixart_folder(path: Path, seed: int = 0, sample_size: int = 8, patch_size: int = 2) -> Path:
    """A PixArtAlphaPipeline folder: tiny transformer (learned σ), T5 encoder, T5 tokenizer, VAE, scheduler."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=12,  # inner dim 24: the micro-condition embedding splits it in thirds
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=24,
        caption_channels=12,
        sample_size=sample_size,
        patch_size=patch_size,
        norm_num_groups=4,
    )
    with torch.no_grad():  # move every weight off its initial value so all inputs matter
        for p in transformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=len(T5_VOCAB), d_model=12, d_kv=6, d_ff=24, num_layers=1, num_heads=2,
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon"
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=T5Tokenizer(vocab=T5_VOCAB, extra_ids=0), text_encoder=text_encoder, vae=tiny_vae(),
        transformer=transformer, scheduler=scheduler,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


@pytest.fixture(scope="session")
def pixart_folder(tmp_path_factory) -> Path:
    return make_pixart_folder(tmp_path_factory.mktemp("pixart") / "model", seed=4)


@pytest.fixture(scope="session")
def pixart_1024_folder(tmp_path_factory) -> Path:
    """sample_size 128 makes the pipeline (and the transformer) use the resolution/aspect micro-conditions."""
    return make_pixart_folder(tmp_path_factory.mktemp("pixart-1024") / "model", seed=5, sample_size=128, patch_size=8)


def load_prior(folder, **options):
    plugins = priorswap.get_plugins()
    registry = priorswap.Registry.load((), plugins.registry_files)
    return load(resolve(str(folder), registry, plugins), "prior", plugins, **options).denoiser


def pipeline_null_branch(folder):
    """Runs PixArtAlphaPipeline with CFG; returns the first transformer call's inputs and output, null half."""
    from diffusers import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    seen = {}

    def hook(module, args, kwargs, output):
        if not seen:  # the first step's call
            seen.update(kwargs, x=args[0], out=output[0])

    pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    pipe(prompt="a photo of a cat", guidance_scale=4.5, num_inference_steps=2, output_type="latent",
         use_resolution_binning=False, generator=torch.Generator().manual_seed(0))
    assert seen["x"].shape[0] == 2  # [negative, positive]: the first half is the null branch
    half = {k: seen[k][:1] for k in ("x", "out", "encoder_hidden_states", "encoder_attention_mask", "timestep")}
    added = seen["added_cond_kwargs"]
    half["added"] = {k: (v[:1] if v is not None else None) for k, v in added.items()}
    return pipe, half


@pytest.mark.parametrize("which", ["pixart_folder", "pixart_1024_folder"])
def test_null_branch_matches_the_pipeline(which, request):
    folder = request.getfixturevalue(which)
    pipe, ref = pipeline_null_branch(folder)
    denoiser = load_prior(folder)
    null = denoiser.null_condition()
    assert torch.equal(null["encoder_attention_mask"], ref["encoder_attention_mask"].to(null["encoder_attention_mask"]))
    assert null["encoder_attention_mask"].sum() == 1  # "" is just </s>; 119 padding tokens are masked
    assert (null["encoder_hidden_states"] - ref["encoder_hidden_states"]).abs().max() < 1e-6
    out = denoiser.forward(ref["x"], ref["timestep"], null)
    assert out.shape == ref["out"].shape and out.shape[1] == 8
    assert (out - ref["out"]).abs().max() < 1e-5
    # the micro-conditions are the pipeline's (1024 model) or absent (512 model)
    added = denoiser.added_conditions(ref["x"])
    for key, value in ref["added"].items():
        assert (value is None) == (added[key] is None)
        if value is not None:
            assert torch.equal(added[key], value)
            # ...and they matter: a wrong resolution changes the prediction
            wrong = {**added, key: added[key] * 2}
            other = pipe.transformer(ref["x"], encoder_hidden_states=null["encoder_hidden_states"],
                                     encoder_attention_mask=null["encoder_attention_mask"],
                                     timestep=ref["timestep"], added_cond_kwargs=wrong).sample
            assert (other - out).abs().max() > 1e-4
    assert denoiser.learned_sigma and denoiser.parameterization == "epsilon"


def test_pixart_is_the_prior_of_a_dit_and_its_null_term_is_the_empty_prompt(dit_folder, pixart_folder):
    from diffusers import DDIMScheduler, DiTPipeline, PixArtAlphaPipeline

    labels, gamma, seed = [3, 7], 2.0, 11
    pair = priorswap.load_pair(str(dit_folder), prior=str(pixart_folder))
    assert pair.plan.ok and "learned-variance channels of the prior dropped" in pair.plan.lines()
    assert pair.routes["prior"].match == "same"  # DiT and PixArt-α share the linear 1e-4–0.02 schedule
    swap = pair.sample(class_label=labels, guidance="prior-swap", scale=gamma, steps=4, seed=seed, decode=False)
    cfg = pair.sample(class_label=labels, guidance="cfg", scale=gamma, steps=4, seed=seed, decode=False)
    assert swap.forward_calls == {"model": 4, "prior": 4}
    assert torch.isfinite(swap.latents).all() and (swap.latents - cfg.latents).abs().max() > 1e-3
    images = pair.sample(class_label=labels, guidance="prior-swap", scale=gamma, steps=2, seed=seed).images
    assert images.shape == (2, 3, 16, 16)

    # One DDIM step by hand: ε = εψ(x, "")[:4] + γ·(εθ(x, c)[:4] − εψ(x, "")[:4]), with the empty-prompt
    # embedding from the pipeline's own encode_prompt, the variance channels of both models dropped.
    one = pair.sample(class_label=labels, guidance="prior-swap", scale=gamma, steps=1, seed=seed, decode=False)
    theta = DiTPipeline.from_pretrained(dit_folder)
    psi = PixArtAlphaPipeline.from_pretrained(pixart_folder)
    sched = DDIMScheduler.from_config(theta.scheduler.config)
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    x = randn_tensor_like(seed, (2, 4, 8, 8))

    def eps_psi(prompt: str) -> torch.Tensor:
        _, _, emb, mask = psi.encode_prompt("a cat", negative_prompt=prompt, max_sequence_length=120)
        out = psi.transformer(x, encoder_hidden_states=emb.expand(2, -1, -1), encoder_attention_mask=mask.expand(2, -1),
                              timestep=t.expand(2), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
        return out.sample[:, :4]

    with torch.no_grad():
        eps_theta = theta.transformer(x, timestep=t.expand(2), class_labels=torch.tensor(labels)).sample[:, :4]
        null, other = eps_psi(""), eps_psi("a red house")

    def by_hand(eps_null):
        return sched.step(eps_null + gamma * (eps_theta - eps_null), t, x).prev_sample

    assert (one.latents - by_hand(null)).abs().max() < 1e-5
    assert (one.latents - by_hand(other)).abs().max() > 1e-4  # the null term really is the empty prompt's


@pytest.fixture
def example_plugins(monkeypatch):
    """The plugins plus the example third-party plugin (a class-conditional diffusers UNet2DModel family)."""
    import importlib
    import sys

    from priorswap.plugin_manager import Plugins

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "examples" / "priorswap-example-plugin"))
    example = importlib.import_module("priorswap_example")
    plugins = Plugins.discover()
    plugins.add(example, "example")
    yield plugins, example
    sys.modules.pop("priorswap_example", None)


def test_pixart_is_the_prior_of_a_unet_on_another_schedule(tmp_path, example_plugins, pixart_folder):
    """UNet2DModel (class labels, scaled-linear β) fine-tuned in the PixArt folder's latent space: the prior
    is queried at the σ-matched timestep; by hand, ε = εψ(x, t_ψ)[:4] + γ·(εθ(x, t) − εψ(x, t_ψ)[:4])."""
    import numpy as np
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, UNet2DModel

    plugins, example = example_plugins
    torch.manual_seed(6)
    unet = UNet2DModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, num_class_embeds=5,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, timestep_spacing="trailing")  # 1 step: t = 999
    unet_folder = example.save_pretrained(tmp_path / "unet", unet, scheduler)
    space = describe_vae(pixart_folder / "vae")
    reg = tmp_path / "unet.yaml"
    reg.write_text(textwrap.dedent(f"""
        version: 1
        models:
          tiny-unet:
            plugin: example-unet
            roles: [model]
            source: {{path: {unet_folder}}}
            latent_space: {{channels: 4, scale: {space["scale"]}, downsample: 2, family: {space["family"]}}}
            schedule: {{beta_schedule: scaled_linear, beta_start: 0.00085, beta_end: 0.012}}
            resolution: 16
            task: example-class
    """))
    labels, gamma, seed = [1, 3], 3.0, 2
    pair = priorswap.load_pair("tiny-unet", prior=str(pixart_folder), registry_files=[str(reg)], plugins=plugins)
    assert pair.routes["prior"].match == "continuous" and any("σ-matching" in x for x in pair.plan.lines())
    swap = pair.sample(class_label=labels, guidance="prior-swap", scale=gamma, steps=3, seed=seed, decode=False)
    assert swap.forward_calls == {"model": 3, "prior": 3} and torch.isfinite(swap.latents).all()

    one = pair.sample(class_label=labels, guidance="prior-swap", scale=gamma, steps=1, seed=seed, decode=False)
    psi = PixArtAlphaPipeline.from_pretrained(pixart_folder)
    sched = DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    sigma = ((1 - sched.alphas_cumprod[t]) / sched.alphas_cumprod[t]).sqrt().item()
    psi_sigmas = ((1 - psi.scheduler.alphas_cumprod) / psi.scheduler.alphas_cumprod).sqrt().double().numpy()
    t_psi = float(np.interp(np.log(sigma), np.log(psi_sigmas), np.arange(len(psi_sigmas))))
    assert abs(t_psi - float(t)) > 50  # the two schedules really differ here
    x = randn_tensor_like(seed, (2, 4, 8, 8))
    _, _, emb, mask = psi.encode_prompt("a cat", negative_prompt="", max_sequence_length=120)
    with torch.no_grad():
        eps_theta = unet(x, t, class_labels=torch.tensor(labels)).sample
        eps_psi = psi.transformer(
            x, encoder_hidden_states=emb.expand(2, -1, -1), encoder_attention_mask=mask.expand(2, -1),
            timestep=torch.tensor([t_psi, t_psi]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample[:, :4]
    ref = sched.step(eps_psi + gamma * (eps_theta - eps_psi), t, x).prev_sample
    assert (one.latents - ref).abs().max() < 1e-6 * ref.abs().max()  # latents O(100) at σ ≈ 15


def randn_tensor_like(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The initial noise the engine draws for `seed` (diffusers' randn_tensor on a CPU generator)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def test_null_condition_comes_from_the_cache_without_the_text_encoder(tmp_path, monkeypatch, pixart_folder):
    import priorswap.plugins.pixart.denoiser as px

    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    folder = shutil.copytree(pixart_folder, tmp_path / "pixart")
    first = load_prior(folder).null_condition()
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2  # embeddings and mask

    (folder / "text_encoder").rename(folder / "text_encoder.moved")
    encode = px.encode_prompt
    monkeypatch.setattr(px, "encode_prompt", lambda *a, **k: (_ for _ in ()).throw(AssertionError("T5 loaded")))
    again = load_prior(folder).null_condition()
    assert all(torch.equal(first[k], again[k]) for k in first)

    # without the cache the text encoder is needed, and the error says so
    monkeypatch.setattr(px, "encode_prompt", encode)
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PriorswapError, match="no text_encoder folder"):
        load_prior(folder)


def hub_registry(tmp_path, folder, repo="tiny-org/tiny-pixart"):
    space = describe_vae(folder / "vae")
    path = tmp_path / "reg.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        models:
          tiny-pixart:
            plugin: pixart
            roles: [prior]
            source: {{repo: {repo}, revision: {COMMIT}}}
            latent_space: {{channels: 4, scale: {space["scale"]}, downsample: 2, family: {space["family"]}}}
            resolution: 16
            learned_sigma: true
    """))
    return str(path)


def test_hub_prior_fetches_the_text_encoder_only_on_a_cache_miss(tmp_path, monkeypatch, dit_folder, pixart_folder):
    calls = []

    def fake_snapshot(repo, revision, allow_patterns, **kwargs):
        """Downloads only the requested folders into one snapshot, like huggingface_hub does."""
        calls.append((repo, revision, sorted({p.split("/")[0] for p in allow_patterns if "/" in p}),
                      kwargs["local_files_only"]))
        dest = tmp_path / "snapshots" / revision
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(pixart_folder / "model_index.json", dest)
        for sub in calls[-1][2]:
            shutil.copytree(pixart_folder / sub, dest / sub, dirs_exist_ok=True)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    reg = hub_registry(tmp_path, pixart_folder)
    pair = priorswap.load_pair(str(dit_folder), prior="tiny-pixart", registry_files=[reg], offline=False)
    assert calls == [
        ("tiny-org/tiny-pixart", COMMIT, ["scheduler", "transformer"], False),
        ("tiny-org/tiny-pixart", COMMIT, ["text_encoder", "tokenizer"], False),  # the miss: T5 fetched once
    ]
    local = load_prior(pixart_folder).null_condition()
    hub_null = pair.prior.denoiser.null_condition()
    assert all(torch.equal(local[k], hub_null[k]) for k in local)

    calls.clear()
    priorswap.load_pair(str(dit_folder), prior="tiny-pixart", registry_files=[reg], offline=True)
    assert calls == [("tiny-org/tiny-pixart", COMMIT, ["scheduler", "transformer"], True)]


def test_a_hub_style_legacy_transformer_config_loads(tmp_path, pixart_folder):
    """The hub repos' transformer/config.json says "Transformer2DModel" with its legacy keys."""
    folder = shutil.copytree(pixart_folder, tmp_path / "legacy")
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(_class_name="Transformer2DModel", double_self_attention=False, num_vector_embeds=None,
                  only_cross_attention=False, use_linear_projection=False)
    config_path.write_text(json.dumps(config))
    a, b = load_prior(folder), load_prior(pixart_folder)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0])
    assert torch.equal(a.forward(x, t, a.null_condition()), b.forward(x, t, b.null_condition()))


def test_registry_entries_pair_with_dit_without_weights():
    plugins = priorswap.get_plugins()
    registry = priorswap.Registry.load((), plugins.registry_files)
    for key, resolution in (("pixart-alpha", 512), ("pixart-alpha-1024", 1024)):
        entry = registry.entry(key)
        assert entry.plugin == "pixart" and entry.roles == ["prior"] and entry.resolution == resolution
        assert entry.latent_space == "sd-kl-f8" and entry.learned_sigma and len(entry.source.revision) == 40
    plans = {p.prior: p for p in priorswap.compatible_priors("dit-xl-2-256", registry, plugins)}
    plan = plans["pixart-alpha"]
    assert plan.ok and plan.adapters == []  # same autoencoder and schedule: only the variance channels go
    assert plugins.family("pixart").folders["prior"] == ["transformer", "scheduler"]


def test_cli_pairs_lists_pixart_priors(capsys, tmp_path, dit_folder, pixart_folder):
    code, out, err = run_cli(capsys, "pairs", str(dit_folder), "--prior", str(pixart_folder))
    assert code == 0, err
    assert "yes" in out and "learned-variance" in out

    reg = tmp_path / "local.yaml"
    space = describe_vae(pixart_folder / "vae")
    reg.write_text(textwrap.dedent(f"""
        version: 1
        models:
          my-pixart:
            plugin: pixart
            roles: [prior]
            source: {{path: {pixart_folder}}}
            latent_space: {{channels: 4, scale: {space["scale"]}, downsample: 2, family: {space["family"]}}}
            resolution: 16
            learned_sigma: true
    """))
    code, out, err = run_cli(capsys, "pairs", str(dit_folder), "--registry", str(reg))
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert "yes" in rows["my-pixart"]
    assert "pixart-alpha" in rows and "no" in rows["pixart-alpha"]  # the tiny DiT's VAE is not sd-kl-f8
