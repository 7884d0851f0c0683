"""A DiT model with a Stable Diffusion (UNet) prior on another noise schedule."""

import torch
from clihelp import run_cli

import priorswap


def test_dit_with_unet_prior_on_another_schedule_samples(dit_folder, sd_folder):
    pair = priorswap.load_pair(str(dit_folder), prior=str(sd_folder))
    assert pair.routes["prior"].match == "continuous"
    assert any("σ-matching" in line for line in pair.plan.lines())
    out = pair.sample(class_label=[2, 5], guidance="prior-swap", scale=1.5, steps=6, seed=0)
    cfg = pair.sample(class_label=[2, 5], guidance="cfg", scale=1.5, steps=6, seed=0)
    assert out.latents.shape == (2, 4, 8, 8) and torch.isfinite(out.latents).all()
    assert out.forward_calls == {"model": 6, "prior": 6}
    assert not torch.allclose(out.latents, cfg.latents)
    nearest = priorswap.load_pair(str(dit_folder), prior=str(sd_folder), match="nearest")
    near = nearest.sample(class_label=[2, 5], scale=1.5, steps=6, seed=0)
    assert not torch.equal(near.latents, out.latents)


def test_pairs_lists_the_inserted_adapters(capsys, dit_folder, sd_folder):
    code, out, err = run_cli(capsys, "pairs", str(dit_folder), "--prior", str(sd_folder))
    assert code == 0, err
    assert "yes" in out and "σ-matching" in out and "scaled_linear" in out


def test_null_condition_is_cached_on_disk(sd_folder, dit_folder, monkeypatch):
    import priorswap.plugins.stable_diffusion.denoiser as sd

    priorswap.load_pair(str(dit_folder), prior=str(sd_folder))
    monkeypatch.setattr(sd, "encode_prompt", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded")))
    again = priorswap.load_pair(str(dit_folder), prior=str(sd_folder))
    assert again.prior.denoiser.null_condition()["encoder_hidden_states"].shape[0] == 1


def test_adapters_off_is_the_naive_ablation(dit_folder, sd_folder):
    naive = priorswap.load_pair(str(dit_folder), prior=str(sd_folder), adapters=False)
    assert naive.routes["prior"].match == "same" and naive.routes["prior"].naive_as == "epsilon"
    matched = priorswap.load_pair(str(dit_folder), prior=str(sd_folder))
    a = naive.sample(class_label=[2], scale=1.5, steps=4, seed=0, decode=False).latents
    b = matched.sample(class_label=[2], scale=1.5, steps=4, seed=0, decode=False).latents
    assert not torch.allclose(a, b)
