"""Hub loading offline: pinned revisions from the cache, role-specific folders, pickles only by opt-in."""

import hashlib
import shutil
import textwrap

import huggingface_hub
import pytest
import torch

import priorswap
from priorswap import hub
from priorswap.errors import WeightsUnavailable
from priorswap.registry import Source
from priorswap.vae import describe_vae

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(tmp_path, folder, repo="tiny-org/tiny-dit", commit=COMMIT):
    """Lays out a Hugging Face cache holding `folder` as snapshot `commit` of `repo`."""
    root = tmp_path / "hub"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return root


def registry_for(tmp_path, dit_folder, repo="tiny-org/tiny-dit", commit=COMMIT):
    """A registry entry for the tiny DiT as a hub repo, with the tiny VAE's latent space inline."""
    space = describe_vae(dit_folder / "vae")
    path = tmp_path / "reg.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        models:
          tiny-dit:
            plugin: dit
            roles: [model, prior]
            source: {{repo: {repo}, revision: {commit}}}
            latent_space: {{channels: 4, scale: {space["scale"]}, downsample: 2, family: {space["family"]}}}
            resolution: 16
            learned_sigma: true
            fixed_size: true
            task: class-label
    """))
    return str(path)


def tiny_sd_registry(tmp_path, sd_folder):
    """A registry file with `tiny-sd`: the tiny SD folder as the hub repo tiny-org/tiny-sd at COMMIT, a prior."""
    space = describe_vae(sd_folder / "vae")
    reg = tmp_path / "sd.yaml"
    reg.write_text(textwrap.dedent(f"""
        version: 1
        models:
          tiny-sd:
            plugin: stable_diffusion
            roles: [prior]
            source: {{repo: tiny-org/tiny-sd, revision: {COMMIT}}}
            latent_space: {{channels: 4, scale: {space["scale"]}, downsample: 2, family: {space["family"]}}}
            schedule: {{beta_schedule: scaled_linear, beta_start: 0.00085, beta_end: 0.012}}
            resolution: 16
    """))
    return reg


def test_loads_a_pinned_revision_from_the_cache_offline(tmp_path, monkeypatch, dit_folder):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(fake_cache(tmp_path, dit_folder)))
    pair = priorswap.load_pair("tiny-dit", registry_files=[registry_for(tmp_path, dit_folder)])
    assert COMMIT in str(pair.model.folder)
    direct = priorswap.load_pair(str(dit_folder))
    a = pair.sample(class_label=[1], steps=3, seed=0, decode=False).latents
    assert torch.equal(a, direct.sample(class_label=[1], steps=3, seed=0, decode=False).latents)


def test_missing_weights_offline_say_what_to_do(tmp_path, monkeypatch, dit_folder):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsUnavailable) as info:
        priorswap.load_pair("tiny-dit", registry_files=[registry_for(tmp_path, dit_folder)])
    message = str(info.value)
    # one glob per --include (hf download takes one), quoted so that a shell does not expand it
    command = (f"hf download tiny-org/tiny-dit --include 'transformer/*' --include 'scheduler/*' --include 'vae/*' "
               f"--revision {COMMIT}")
    assert command in message and "the registry entry 'tiny-dit'" in message
    assert hf_cli_patterns(command) == ["transformer/*", "scheduler/*", "vae/*"]


def hf_cli_patterns(command: str) -> list[str]:
    """The allow_patterns huggingface_hub's own `hf download` passes to snapshot_download for `command`."""
    import shlex

    pytest.importorskip("huggingface_hub.cli.hf")
    from huggingface_hub.cli import download
    from huggingface_hub.cli.hf import app

    seen = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(download, "snapshot_download", lambda **kw: seen.append(kw["allow_patterns"]) or ".")
        patch.setattr(download, "hf_hub_download", lambda **kw: pytest.fail("hf download took a pattern as a file"))
        app.main(args=shlex.split(command)[1:], standalone_mode=False)
    (patterns,) = seen
    return patterns


def test_hf_download_takes_one_pattern_per_include():
    """The command printed before this fix: `hf download` read the second and third globs as file names, so the
    transformer (the model itself) was never fetched."""
    old = "hf download tiny-org/tiny-dit --include 'transformer/*' 'scheduler/*' 'vae/*' --revision main"
    with pytest.warns(UserWarning, match="Ignoring `--include`"):
        assert hf_cli_patterns(old) == ["scheduler/*", "vae/*"]
    source = Source(repo="org/x", revision=COMMIT)
    assert hub.download_command(source, ["unet", "text encoder"]) == (
        f"hf download org/x --include 'unet/*' --include 'text encoder/*' --revision {COMMIT}")
    assert hub.download_command(source) == f"hf download org/x --revision {COMMIT}"


def test_a_prior_fetches_only_its_denoiser(monkeypatch, tmp_path, dit_folder):
    seen = []
    real = hub.snapshot_download if hasattr(hub, "snapshot_download") else None
    assert real is None  # imported lazily inside fetch

    def fake_snapshot(repo, revision, allow_patterns, **kwargs):
        seen.append((repo, revision, allow_patterns, kwargs["local_files_only"]))
        return str(dit_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    reg = registry_for(tmp_path, dit_folder)
    priorswap.load_pair(str(dit_folder), prior="tiny-dit", registry_files=[reg])
    (repo, revision, patterns, offline), = seen
    assert (repo, revision, offline) == ("tiny-org/tiny-dit", COMMIT, True)
    assert "transformer/*.safetensors" in patterns and "scheduler/*.json" in patterns
    assert not any(p.startswith("vae/") for p in patterns)
    assert not any(p.endswith(".bin") for p in patterns)


def test_patterns_include_pickles_only_on_request():
    assert hub.patterns(["unet"], allow_pickle=False) == [
        "model_index.json", "unet/*.json", "unet/*.txt", "unet/*.model", "unet/*.safetensors"
    ]
    assert "unet/*.bin" in hub.patterns(["unet"], allow_pickle=True)
    assert hub.patterns(None, allow_pickle=False) is None


def pickled_copy(tmp_path, dit_folder):
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(dit_folder, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()
    return folder


def test_pickles_are_refused_without_opt_in(tmp_path, dit_folder):
    folder = pickled_copy(tmp_path, dit_folder)
    with pytest.raises(WeightsUnavailable, match="--allow-pickle"):
        priorswap.load_pair(str(folder))


def test_pickles_load_with_weights_only_when_allowed(tmp_path, dit_folder, monkeypatch):
    folder = pickled_copy(tmp_path, dit_folder)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    pair = priorswap.load_pair(str(folder), allow_pickle=True)
    assert calls == [True]
    ref = priorswap.load_pair(str(dit_folder))
    a = pair.sample(class_label=[4], steps=2, seed=0, decode=False).latents
    assert torch.equal(a, ref.sample(class_label=[4], steps=2, seed=0, decode=False).latents)


def test_an_opted_in_pickle_is_kept_as_safetensors_for_later_runs(tmp_path, dit_folder, monkeypatch, capsys):
    folder = pickled_copy(tmp_path, dit_folder)
    first = priorswap.load_pair(str(folder), allow_pickle=True)
    assert "converted the pickled weights once to safetensors" in capsys.readouterr().err
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was read again"))
    again = priorswap.load_pair(str(folder))  # no opt-in needed: the safetensors copy is read
    a, b = (p.sample(class_label=[4], steps=2, seed=0, decode=False).latents for p in (first, again))
    assert torch.equal(a, b)
    # a changed pickle is not matched to the old copy
    bin_file = folder / "transformer" / "diffusion_pytorch_model.bin"
    bin_file.write_bytes(bin_file.read_bytes())
    import os

    os.utime(bin_file, ns=(1, 1))
    with pytest.raises(WeightsUnavailable, match="--allow-pickle"):
        priorswap.load_pair(str(folder))


def test_local_and_package_sources(tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        hub.fetch(Source(path=str(tmp_path / "nope")))
    assert hub.fetch(Source(package="priorswap", path="..")).is_dir()


def test_a_stable_diffusion_prior_fetches_its_text_encoder_only_on_a_null_cache_miss(
    monkeypatch, tmp_path, dit_folder, sd_folder
):
    """First load: unet+scheduler, then text_encoder+tokenizer (to encode ""); later: unet+scheduler only."""
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    fetched, snapshot = [], tmp_path / "snapshot"

    def fake_snapshot(repo, revision, allow_patterns, **kwargs):
        """Like the hub cache: the snapshot folder accumulates the sub-folders fetched so far."""
        folders = sorted({p.split("/")[0] for p in allow_patterns if "/" in p})
        fetched.append(folders)
        for name in folders:
            if not (snapshot / name).exists():
                shutil.copytree(sd_folder / name, snapshot / name)
        shutil.copy(sd_folder / "model_index.json", snapshot / "model_index.json")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    reg = tiny_sd_registry(tmp_path, sd_folder)
    first = priorswap.load_pair(str(dit_folder), prior="tiny-sd", registry_files=[str(reg)])
    assert fetched == [["scheduler", "unet"], ["text_encoder", "tokenizer"]]
    fetched.clear()
    second = priorswap.load_pair(str(dit_folder), prior="tiny-sd", registry_files=[str(reg)])
    assert fetched == [["scheduler", "unet"]]
    a, b = first.prior.denoiser.null_condition(), second.prior.denoiser.null_condition()
    assert torch.equal(a["encoder_hidden_states"], b["encoder_hidden_states"])


SHA = "a" * 64


def test_content_pinned_sources_validate():
    pinned = Source(repo="org/x", revision="main", file="model.ckpt", sha256=SHA)
    assert not pinned.pinned_by_commit and pinned.describe() == "org/x@main:model.ckpt (sha256 aaaaaaaaaaaa…)"
    with pytest.raises(ValueError, match="full 40-character commit hash.*or give `file` with its `sha256`"):
        Source(repo="org/x", revision="main", file="model.ckpt")
    with pytest.raises(ValueError, match="give the `file`"):
        Source(repo="org/x", revision=COMMIT, sha256=SHA)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Source(repo="org/x", revision="main", file="model.ckpt", sha256="ABC")


def test_extra_files_validate_and_describe():
    extra = {"repo": "org/clip", "revision": COMMIT, "file": "clip.safetensors", "sha256": SHA}
    src = Source(repo="org/x", revision="main", file="model.safetensors", sha256=SHA, extra_files=[extra])
    assert src.describe() == ("org/x@main:model.safetensors (sha256 aaaaaaaaaaaa…) + "
                              f"org/clip@{COMMIT[:10]}:clip.safetensors (sha256 aaaaaaaaaaaa…)")
    assert src.describe(extras=False) == "org/x@main:model.safetensors (sha256 aaaaaaaaaaaa…)"
    with pytest.raises(ValueError, match="`extra_files` go with a single-checkpoint source"):
        Source(repo="org/x", revision=COMMIT, extra_files=[extra])
    with pytest.raises(ValueError, match="each of `extra_files` names one `file`"):
        Source(repo="org/x", revision=COMMIT, file="m.safetensors", extra_files=[{"repo": "org/c", "revision": COMMIT}])
    with pytest.raises(ValueError, match="full 40-character commit"):  # an extra file is pinned like any source
        Source(repo="org/x", revision=COMMIT, file="m.safetensors",
               extra_files=[{"repo": "org/c", "revision": "main", "file": "c.safetensors"}])


def _blob_cache(tmp_path, content: bytes, repo="org/x", commit=COMMIT):
    """A Hugging Face cache with `model.ckpt` of `repo` on main (the snapshot file links to its blob)."""
    import hashlib

    sha = hashlib.sha256(content).hexdigest()
    repo_dir = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / sha).write_bytes(content)
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    (repo_dir / "snapshots" / commit / "model.ckpt").symlink_to(repo_dir / "blobs" / sha)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return tmp_path / "hub", sha


def test_a_content_pinned_file_is_verified(tmp_path, monkeypatch):
    root, sha = _blob_cache(tmp_path, b"released weights")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    good = Source(repo="org/x", revision="main", file="model.ckpt", sha256=sha)
    assert hub.fetch_file(good, offline=True).read_bytes() == b"released weights"
    bad = Source(repo="org/x", revision="main", file="model.ckpt", sha256=SHA)
    with pytest.raises(WeightsUnavailable, match=f"sha256 is {sha}, the registry pins {SHA}"):
        hub.fetch_file(bad, offline=True)
    local = tmp_path / "local"
    local.mkdir()
    (local / "model.ckpt").write_bytes(b"tampered")
    with pytest.raises(WeightsUnavailable) as info:  # the user's own file: no advice to download it again
        hub.fetch_file(Source(path=str(local), file="model.ckpt", sha256=sha))
    message = str(info.value)
    tampered = hashlib.sha256(b"tampered").hexdigest()
    assert f"its sha256 is {tampered}, the entry's `sha256` is {sha}" in message and str(local) in message
    assert "download" not in message and "hf cache" not in message


def test_a_moved_branch_is_refused_before_downloading(tmp_path, monkeypatch):
    """Online, the hub's etag (an LFS file's sha256) is checked first; the download is made at the commit the
    metadata names, so the file verified and the file fetched are the same."""
    from types import SimpleNamespace

    root, sha = _blob_cache(tmp_path, b"released weights")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []
    real = huggingface_hub.hf_hub_download

    def download(repo, file, *, revision, **kw):
        calls.append(revision)
        return real(repo, file, revision=revision, **{**kw, "local_files_only": True})

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    meta = SimpleNamespace(etag="b" * 64, commit_hash=COMMIT)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url: meta)
    source = Source(repo="org/x", revision="main", file="model.ckpt", sha256=sha)
    with pytest.raises(WeightsUnavailable, match="no longer the pinned file .*branch has moved"):
        hub.fetch_file(source, offline=False)
    assert calls == []
    meta.etag = sha
    assert hub.fetch_file(source, offline=False).read_bytes() == b"released weights"
    assert calls == [COMMIT]


def test_the_converted_folder_of_a_content_pinned_source_is_keyed_by_its_hash():
    from priorswap.conversion import converted_path
    from priorswap.registry import ModelEntry

    fam = priorswap.Family(name="f", load=lambda request: None)
    entry = ModelEntry(plugin="f", source=Source(repo="org/x", revision="main", file="model.ckpt", sha256=SHA),
                       latent_space="sd-kl-f8", resolution=256, variant="v")
    assert converted_path(entry, fam).parent.name == SHA


def test_an_offline_partly_cached_prior_says_which_folders_to_download(tmp_path, monkeypatch, dit_folder, sd_folder):
    """The snapshot holds the UNet and scheduler only (a run that found the null condition cached); on a null-cache
    miss offline, the text encoder is missing: the message gives the command for exactly those folders."""
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))  # nothing encoded yet
    partial = tmp_path / "partial"
    for name in ("unet", "scheduler", "model_index.json"):
        (shutil.copytree if (sd_folder / name).is_dir() else shutil.copy)(sd_folder / name, partial / name)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE",
                        str(fake_cache(tmp_path, partial, repo="tiny-org/tiny-sd")))
    reg = tiny_sd_registry(tmp_path, sd_folder)
    with pytest.raises(WeightsUnavailable) as info:
        priorswap.load_pair(str(dit_folder), prior="tiny-sd", registry_files=[str(reg)], offline=True)
    message = str(info.value)
    command = f"hf download tiny-org/tiny-sd --include 'text_encoder/*' --include 'tokenizer/*' --revision {COMMIT}"
    assert command in message and "lacks text_encoder/, tokenizer/" in message and "offline" in message


def test_an_offline_uncached_prior_names_the_folders_its_first_run_also_needs(tmp_path, monkeypatch, dit_folder,
                                                                              sd_folder):
    """Nothing cached: the message gives the UNet's download and says the text encoder is needed until the null
    condition is cached, so that one download covers the first run (it took two round trips)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    reg = tiny_sd_registry(tmp_path, sd_folder)
    with pytest.raises(WeightsUnavailable) as info:
        priorswap.load_pair(str(dit_folder), prior="tiny-sd", registry_files=[str(reg)], offline=True)
    message = " ".join(str(info.value).split())
    assert f"hf download tiny-org/tiny-sd --include 'unet/*' --include 'scheduler/*' --revision {COMMIT}" in message
    assert ("Until its null condition is cached (the first run), the prior also needs text_encoder/, tokenizer/: add "
            "--include 'text_encoder/*' --include 'tokenizer/*' to that download.") in message
    assert message.startswith("the registry entry 'tiny-sd'")


def test_a_bin_only_vae_decodes_with_allow_pickle(tmp_path, dit_folder):
    """The DiT task loads the folder's VAE under the model's own opt-in (`allow_pickle`)."""
    from safetensors.torch import load_file

    folder = tmp_path / "bin-vae"
    shutil.copytree(dit_folder, folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(WeightsUnavailable, match=r"vae holds only pickled weights.*--allow-pickle"):
        priorswap.load_pair(str(folder))
    images = priorswap.load_pair(str(folder), allow_pickle=True).sample(class_label=[3], steps=2, seed=0).images
    reference = priorswap.load_pair(str(dit_folder)).sample(class_label=[3], steps=2, seed=0).images
    assert images is not None and torch.equal(images, reference)


def test_a_local_source_path_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "weights").mkdir()
    assert hub.fetch(Source(path="~/weights")) == tmp_path / "weights"


def test_an_offline_snapshot_without_the_role_folders_says_what_to_download(tmp_path, monkeypatch, dit_folder):
    """snapshot_download offline returns a cached snapshot without checking the patterns: a snapshot cached for
    another use (scheduler only) fails to load, and the message names the missing folders' command."""
    partial = tmp_path / "partial"
    shutil.copytree(dit_folder / "scheduler", partial / "scheduler")
    shutil.copy(dit_folder / "model_index.json", partial / "model_index.json")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(fake_cache(tmp_path, partial)))
    with pytest.raises(WeightsUnavailable) as info:
        priorswap.load_pair("tiny-dit", registry_files=[registry_for(tmp_path, dit_folder)])
    message = str(info.value)
    command = f"hf download tiny-org/tiny-dit --include 'transformer/*' --include 'vae/*' --revision {COMMIT}"
    assert command in message and "lacks transformer/, vae/" in message and "'tiny-dit'" in message
