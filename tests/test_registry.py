"""registry.yaml validation, merging, lookups and computed compatibility."""

import re
import textwrap

import pytest
from clihelp import run_cli

from priorswap.errors import RegistryError
from priorswap.loading import compatible_priors
from priorswap.plugin_manager import get_plugins
from priorswap.registry import Registry, parse_file, shipped_registry_path

GOOD = """
version: 1
latent_spaces:
  my-space: {channels: 4, scale: 0.5, family: my-vae}
models:
  my-model:
    plugin: dit
    source: {path: ./weights}
    latent_space: my-space
    resolution: 64
"""


def write(tmp_path, text, name="reg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_registry_is_valid():
    reg = Registry.load()
    assert "dit-xl-2-256" in reg.models
    entry = reg.entry("dit-xl-2-256")
    assert entry.source.repo == "facebook/DiT-XL-2-256" and len(entry.source.revision) == 40
    assert shipped_registry_path().name == "registry.yaml"


def test_relative_paths_resolve_next_to_the_file(tmp_path):
    reg = parse_file(write(tmp_path, GOOD))
    assert reg.models["my-model"].source.path == str((tmp_path / "weights").resolve())


@pytest.mark.parametrize(
    ("change", "entry", "field"),
    [
        (("resolution: 64", "resolution: 64\n    colour: blue"), "my-model", "colour"),
        (("    plugin: dit\n", ""), "my-model", "plugin"),
        (("source: {path: ./weights}", "source: {repo: org/name, revision: main}"), "my-model", "source"),
        (("source: {path: ./weights}", "source: {repo: org/name}"), "my-model", "source"),
        (("channels: 4", "channels: -4"), "my-space", "channels"),
        (("resolution: 64", "resolution: 64\n    parameterization: eps"), "my-model", "parameterization"),
    ],
)
def test_malformed_entries_name_the_file_entry_and_field(tmp_path, change, entry, field):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(RegistryError) as info:
        parse_file(path)
    message = str(info.value)
    assert str(path) in message and f"entry '{entry}'" in message and f"field '{field}" in message


def test_bad_revision_says_how_to_pin(tmp_path):
    path = write(tmp_path, GOOD.replace("source: {path: ./weights}", "source: {repo: org/name, revision: main}"))
    with pytest.raises(RegistryError, match="40-character commit hash"):
        parse_file(path)


def test_unknown_latent_space_reference(tmp_path):
    path = write(tmp_path, GOOD.replace("latent_space: my-space", "latent_space: my-spac"))
    with pytest.raises(RegistryError, match=r"entry 'my-model'.*field 'latent_space'.*Did you mean my-space"):
        Registry.load([str(path)])


def test_unknown_id_suggests_close_matches():
    with pytest.raises(RegistryError, match="Did you mean: dit-xl-2-256"):
        Registry.load().entry("dit-xl-2-265")


def test_user_files_override_and_env_var(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("PRIORSWAP_REGISTRY", str(path))
    reg = Registry.load()
    assert "my-model" in reg.models and "dit-xl-2-256" in reg.models


def test_cli_reports_bad_registry_with_exit_2(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("resolution: 64", "resolution: 64\n    colour: blue"))
    code, _, err = run_cli(capsys, "list", "--registry", str(path))
    assert code == 2 and "colour" in err and "my-model" in err


def test_compatibility_is_computed(tmp_path):
    spaces = """
    version: 1
    latent_spaces:
      sd-half: {channels: 4, scale: 0.0910750, family: sd-kl-f8}
      other: {channels: 16, scale: 1.0, family: flux-vae}
    models:
      half-prior:
        plugin: dit
        roles: [prior]
        source: {path: ./a}
        latent_space: sd-half
        schedule: {beta_schedule: scaled_linear, beta_start: 0.00085, beta_end: 0.012}
        parameterization: v_prediction
        resolution: 256
      flux-like:
        plugin: dit
        roles: [prior]
        source: {path: ./b}
        latent_space: other
        schedule: {kind: flow}
        parameterization: flow
        resolution: 256
      video-prior:
        plugin: dit
        roles: [prior]
        source: {path: ./c}
        latent_space: sd-kl-f8
        modality: video
        resolution: 256
    """
    plugins = get_plugins()
    reg = Registry.load([str(write(tmp_path, spaces))])
    plans = {p.prior: p for p in compatible_priors("dit-xl-2-256", reg, plugins)}
    half = plans["half-prior"]
    assert half.ok
    lines = "\n".join(half.lines())
    assert "latent-affine" in lines and "σ-matching" in lines and "v_prediction" in lines
    assert not plans["flux-like"].ok and "latent spaces differ" in plans["flux-like"].reason
    assert not plans["video-prior"].ok and "video" in plans["video-prior"].reason
    assert "dit-xl-2-256" not in plans


def test_an_image_conditioned_unet_in_a_stable_diffusion_folder_is_named(tmp_path, sd_folder, capsys):
    """MagicBrush-style folders say StableDiffusionPipeline but hold an 8-channel UNet: refuse with a hint."""
    import json
    import shutil

    from clihelp import run_cli

    folder = tmp_path / "magicbrush-like"
    shutil.copytree(sd_folder, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 8}))
    code, _, err = run_cli(capsys, "pairs", str(folder))
    assert code == 2 and "8 input channels" in " ".join(err.split()) and "instruct_pix2pix" in err


def test_dit_priors_of_another_size_are_resampled(capsys, dit_folder):
    """DiT is trained at one size: the shipped entries (and local DiT folders) are fixed-size, so a DiT prior
    for a DiT of another resolution runs at its own latent size through the `resample` adapter."""
    from priorswap.adapters import Resample
    from priorswap.loading import resolve

    plugins = get_plugins()
    reg = Registry.load(plugin_files=plugins.registry_files)
    assert reg.entry("dit-xl-2-256").fixed_size and reg.entry("dit-xl-2-512").fixed_size
    for model, prior, size in (("dit-xl-2-512", "dit-xl-2-256", 32), ("dit-xl-2-256", "dit-xl-2-512", 64)):
        plan = {p.prior: p for p in compatible_priors(model, reg, plugins)}[prior]
        assert plan.ok and [(type(a), a.size) for a in plan.adapters] == [(Resample, size)]
    code, out, err = run_cli(capsys, "pairs", "dit-xl-2-512", "--prior", "dit-xl-2-256")
    assert code == 0 and "resample: the prior runs at 32×32 latents" in " ".join(out.split()), err
    assert resolve(str(dit_folder), reg, plugins).entry.fixed_size


def test_an_entry_that_contradicts_its_weights_warns(tmp_path, dit_folder):
    import priorswap
    from priorswap.errors import RegistryMismatchWarning
    from priorswap.loading import entry_disagreements

    reg = write(tmp_path, f"""
        version: 1
        models:
          mislabelled:
            plugin: dit
            source: {{path: {dit_folder}}}
            latent_space: sd-kl-f8
            resolution: 64
            parameterization: v_prediction
            schedule: {{beta_schedule: scaled_linear, beta_start: 0.00085, beta_end: 0.012}}
          labelled:
            plugin: dit
            source: {{path: {dit_folder}}}
            latent_space: sd-kl-f8
            resolution: 64
    """)
    with pytest.warns(RegistryMismatchWarning, match="'mislabelled'") as caught:
        pair = priorswap.load_pair("mislabelled", registry_files=[str(reg)])
    message = str(caught[0].message)
    assert "parameterization: entry v_prediction, weights epsilon" in message and "schedule: entry" in message
    plain = priorswap.load_pair("labelled", registry_files=[str(reg)])
    assert entry_disagreements(plain.model.resolved.entry, plain.model.denoiser) == []
    assert len(entry_disagreements(pair.model.resolved.entry, pair.model.denoiser)) == 2


def test_unreadable_registry_files_name_the_file(tmp_path):
    with pytest.raises(RegistryError, match=f"registry file {tmp_path} is a folder"):
        parse_file(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("version: 1\n# café\n".encode("latin-1"))
    with pytest.raises(RegistryError, match=f"registry file {latin} is not UTF-8 text"):
        parse_file(latin)


def test_cli_reports_a_folder_given_as_registry_with_exit_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "list", "--registry", str(tmp_path))
    assert code == 2 and "is a folder" in err and "Traceback" not in err


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    reg = parse_file(write(tmp_path, GOOD.replace("source: {path: ./weights}", "source: {path: ~/weights}")))
    assert reg.models["my-model"].source.path == str(tmp_path / "home" / "weights")


def test_a_duplicate_id_in_one_file_is_an_error(tmp_path):
    twice = GOOD + """
  my-model:
    plugin: dit
    source: {path: ./other}
    latent_space: my-space
    resolution: 64
"""
    path = write(tmp_path, twice)
    with pytest.raises(RegistryError) as info:
        parse_file(path)
    message = str(info.value)
    assert f"{path}, line 12: 'my-model' appears twice in the same mapping (first on line 6)" in message
    doubled_field = write(tmp_path, GOOD.replace("resolution: 64", "resolution: 64\n    resolution: 32"), "f.yaml")
    with pytest.raises(RegistryError, match="'resolution' appears twice"):
        parse_file(doubled_field)


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = write(tmp_path, """
    version: 1
    models:
      base: &base {plugin: dit, source: {path: ./w}, latent_space: sd-kl-f8, resolution: 64}
      other:
        <<: *base
        resolution: 128
    """)
    assert parse_file(path).models["other"].resolution == 128


def test_the_registry_records_where_each_entry_came_from(tmp_path, monkeypatch, capsys):
    """Overriding stays allowed; `origin` and `overrides` say who defined an id (for `priorswap list`)."""
    mine = write(tmp_path, GOOD.replace("my-model:", "dit-xl-2-256:").replace("my-space:", "sd-kl-f8:")
                 .replace("latent_space: my-space", "latent_space: sd-kl-f8"))
    monkeypatch.setenv("PRIORSWAP_REGISTRY", str(mine))
    reg = get_plugins().load_registry()
    assert reg.origin("dit-xl-2-256") == str(mine) and reg.overrides("dit-xl-2-256") == ["shipped"]
    assert reg.entry("dit-xl-2-256").source.path == str((tmp_path / "weights").resolve())
    assert reg.origin("dit-xl-2-512") == "shipped" and reg.overrides("dit-xl-2-512") == []
    assert reg.origin("toy-digits-class") == "plugin toy"
    assert reg.space_origin("sd-kl-f8") == str(mine) and reg.space_overrides("sd-kl-f8") == ["shipped"]
    assert reg.space_origin("toy-pixels") == "plugin toy" and reg.files["dit-xl-2-256"] == str(mine)
    _, out, _ = run_cli(capsys, "doctor")
    assert f"overridden by a later file: dit-xl-2-256 ({mine} replaces shipped)" in " ".join(out.split())


def test_latent_spaces_name_no_autoencoder_weights(tmp_path):
    path = write(tmp_path, GOOD.replace("family: my-vae}", "family: my-vae, vae: {path: ./vae}}"))
    with pytest.raises(RegistryError) as info:
        parse_file(path)
    message = str(info.value)
    assert "entry 'my-space' in latent_spaces, field 'vae'" in message and "vae/ of its own folder" in message


def test_the_documented_defaults_are_the_code_defaults():
    """docs/registry.md's table of fields left out, against the pydantic models."""
    from pathlib import Path

    from priorswap.registry import LatentSpaceSpec, ModelEntry, Source

    doc = (Path(__file__).resolve().parent.parent / "docs" / "registry.md").read_text()
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+) \|$", doc, re.M))
    required = sorted(n for n, f in ModelEntry.model_fields.items() if f.is_required())
    assert rows["`plugin`, `source`, `latent_space`, `resolution`"] == "required"
    assert required == ["latent_space", "plugin", "resolution", "source"]
    entry = ModelEntry(plugin="dit", source=Source(path="."), latent_space="x", resolution=8)
    assert entry.roles == ["model"] and rows["`roles`"].startswith("`[model]`")
    schedule = entry.schedule.model_dump().items()
    flow = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in schedule)
    assert rows["`schedule`"] == f"`{{{flow}}}`"
    assert entry.parameterization == "epsilon" and rows["`parameterization`"] == "`epsilon`"
    assert entry.modality == "image" and rows["`modality`"] == "`image`"
    assert (entry.learned_sigma, entry.fixed_size) == (False, False)
    assert rows["`learned_sigma`, `fixed_size`"] == "`false`"
    assert entry.task is None and rows["`task`"].startswith("none")
    assert (entry.variant, entry.license, entry.description) == (None, None, "")
    assert rows["`variant`, `license`"] == "none" and rows["`description`"] == "empty"
    rec = ", ".join(f"{k}: {'null' if v is None else v}" for k, v in entry.recommended.model_dump().items())
    assert rows["`recommended`"].startswith(f"`{{{rec}}}`")
    space = LatentSpaceSpec(channels=4)
    assert [n for n, f in LatentSpaceSpec.model_fields.items() if f.is_required()] == ["channels"]
    assert (space.scale, space.shift, space.downsample, space.family) == (1.0, 0.0, 8, "")
    assert rows["latent space `scale`, `shift`, `downsample`, `family`"].startswith("`1.0`, `0.0`, `8`, empty")
