"""Load errors name the entry, its registry file and what to do; no traceback reaches the CLI user."""

import importlib
import shutil
import textwrap

import pytest
import torch
from clihelp import run_cli

import priorswap
from priorswap import hub, plugin_manager
from priorswap.errors import PluginError, PriorswapError, WeightsUnavailable
from priorswap.plugin_manager import Plugins
from priorswap.vae import describe_vae

BUILTIN = ("dit", "dynamicrafter", "instruct_pix2pix", "pixart", "stable_diffusion", "toy", "versatile_diffusion",
           "zero123")


@pytest.fixture
def builtin_plugins(monkeypatch):
    """Exactly the built-in plugins, whatever else this environment has installed."""
    plugins = Plugins()
    for name in BUILTIN:
        plugins.add(importlib.import_module(f"priorswap.plugins.{name}"), name)
    monkeypatch.setattr(plugin_manager, "_CACHE", plugins)
    return plugins


def tiny_space(folder) -> str:
    space = describe_vae(folder / "vae")
    return f"{{channels: 4, scale: {space['scale']}, downsample: 2, family: {space['family']}}}"


def registry(tmp_path, entries: str, name: str = "reg.yaml") -> str:
    path = tmp_path / name
    path.write_text("version: 1\nmodels:\n" + textwrap.indent(textwrap.dedent(entries), "  "))
    return str(path)


class Unsafe:
    """Anything but a tensor: torch.load(weights_only=True) refuses to unpickle it."""


# 3: pickles holding more than tensors


def test_a_pickle_with_objects_is_refused_naming_the_file(tmp_path):
    file = tmp_path / "weights.bin"
    torch.save({"w": torch.zeros(2), "extra": Unsafe()}, file)
    with pytest.raises(WeightsUnavailable) as info:
        hub.load_state_dict(file, allow_pickle=True)
    message = str(info.value)
    assert str(file) in message and "contains objects other than tensors" in message
    assert "cannot be loaded safely" in message and "Unsafe" in message


def test_a_damaged_pickled_component_is_named_too(tmp_path, dit_folder):
    """A truncated pickle or one that is no pickle at all (weights_only refuses its opcodes: not "objects")."""
    from safetensors.torch import load_file

    folder = tmp_path / "damaged"
    shutil.copytree(dit_folder, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    pickled = weights.with_suffix(".bin")
    torch.save(load_file(weights), pickled)
    weights.unlink()
    pickled.write_bytes(pickled.read_bytes()[:500])
    with pytest.raises(WeightsUnavailable, match=f"{pickled} is not a readable PyTorch checkpoint"):
        priorswap.load_pair(str(folder), allow_pickle=True)
    pickled.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(WeightsUnavailable, match=r"not a readable PyTorch checkpoint \(UnpicklingError: Unsupported"):
        priorswap.load_pair(str(folder), allow_pickle=True)


def unsafe_pickled_dit(tmp_path, dit_folder):
    folder = tmp_path / "unsafe"
    shutil.copytree(dit_folder, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save({"w": torch.zeros(2), "extra": Unsafe()}, weights.with_suffix(".bin"))
    weights.unlink()
    return folder


def test_an_unsafe_pickled_component_gives_exit_2(tmp_path, dit_folder, capsys):
    folder = unsafe_pickled_dit(tmp_path, dit_folder)
    with pytest.raises(WeightsUnavailable, match="contains objects other than tensors"):
        priorswap.load_pair(str(folder), allow_pickle=True)
    out = tmp_path / "x.safetensors"
    code, _, err = run_cli(capsys, "sample", "--model", str(folder), "--allow-pickle", "--class-label", "1",
                           "--steps", "2", "--save-latents", str(out))
    flat = " ".join(err.split())
    assert code == 2 and "contains objects other than tensors" in flat and "Traceback" not in err
    assert not out.exists()


def test_an_unsafe_checkpoint_file_is_refused_when_recognising_it(tmp_path, capsys):
    file = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "callbacks": Unsafe()}, file)
    code, _, err = run_cli(capsys, "pairs", str(file), "--allow-pickle")
    assert code == 2 and "contains objects other than tensors" in " ".join(err.split())


# 5: package sources


def test_a_package_source_whose_package_is_missing(tmp_path, dit_folder, builtin_plugins, capsys):
    reg = registry(tmp_path, f"""
        shipped-elsewhere:
          plugin: dit
          source: {{package: no_such_priorswap_plugin, path: weights/tiny}}
          latent_space: {tiny_space(dit_folder)}
          resolution: 16
    """)
    with pytest.raises(WeightsUnavailable) as info:
        priorswap.load_pair("shipped-elsewhere", registry_files=[reg])
    message = str(info.value)
    assert "'shipped-elsewhere'" in message and reg in message and "'no_such_priorswap_plugin'" in message
    assert "plugin that ships it may not be installed" in message
    code, out, _ = run_cli(capsys, "doctor", "--registry", reg)
    flat = " ".join(out.split())
    assert code == 1 and "'shipped-elsewhere'" in flat and "no_such_priorswap_plugin" in flat


def test_doctor_checks_that_package_sources_resolve(tmp_path, dit_folder, builtin_plugins, capsys):
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0, out  # the built-in plugins and the shipped registry alone are all good
    reg = registry(tmp_path, f"""
        bad-path:
          plugin: dit
          source: {{package: priorswap, path: no/such/folder}}
          latent_space: {tiny_space(dit_folder)}
          resolution: 16
    """)
    code, out, _ = run_cli(capsys, "doctor", "--registry", reg)
    flat = " ".join(out.split())
    assert code == 1 and "'bad-path'" in flat and "priorswap:no/such/folder" in flat


# 6: decoding needs a decoder


def latents_only(tmp_path, dit_folder) -> str:
    """A registry file with `latents-only`: the tiny DiT without its vae/ folder."""
    folder = tmp_path / "no-vae"
    shutil.copytree(dit_folder, folder)
    shutil.rmtree(folder / "vae")
    return registry(tmp_path, f"""
        latents-only:
          plugin: dit
          source: {{path: {folder}}}
          latent_space: {tiny_space(dit_folder)}
          resolution: 16
    """)


def test_a_task_says_before_sampling_whether_it_can_decode(tmp_path, dit_folder):
    assert priorswap.load_pair(str(dit_folder)).task.can_decode()
    pair = priorswap.load_pair("latents-only", registry_files=[latents_only(tmp_path, dit_folder)])
    assert not pair.task.can_decode()
    assert pair.sample(class_label=[1], steps=2).images is None


def test_sample_without_a_decoder_refuses_images_before_sampling(tmp_path, dit_folder, capsys, monkeypatch):
    from priorswap.engine import Sampler

    def never(*args, **kwargs):
        raise AssertionError("sampled before refusing")

    monkeypatch.setattr(Sampler, "run", never)
    reg, out = latents_only(tmp_path, dit_folder), tmp_path / "x.png"
    code, _, err = run_cli(capsys, "sample", "--model", "latents-only", "--registry", reg, "--class-label", "1",
                           "--steps", "2", "--out", str(out))
    assert code == 2 and "has no decoder here" in err and "--save-latents" in err and not out.exists()


def test_the_default_can_decode_follows_decode():
    from priorswap.task import Task

    class Plain(Task):
        name = "plain"
        batch_size = conditions = None

    class Decoding(Plain):
        def decode(self, latents):
            return latents

    assert not Plain.can_decode(object.__new__(Plain)) and Decoding.can_decode(object.__new__(Decoding))


# 11: load errors name the entry and the file


def test_an_entry_whose_plugin_is_not_installed(tmp_path, dit_folder, builtin_plugins, capsys):
    reg = registry(tmp_path, f"""
        orphan:
          plugin: dti
          roles: [model, prior]
          source: {{path: {dit_folder}}}
          latent_space: {tiny_space(dit_folder)}
          resolution: 16
    """)
    code, out, _ = run_cli(capsys, "doctor", "--registry", reg)
    flat = " ".join(out.split())
    assert code == 1 and "'orphan'" in flat and reg in flat and "plugin: dti" in flat and "problems found" in flat
    with pytest.raises(PluginError) as info:
        priorswap.load_pair("orphan", registry_files=[reg])
    message = str(info.value)
    assert "'orphan'" in message and reg in message and "did you mean dit?" in message
    code, _, err = run_cli(capsys, "sample", "--model", "orphan", "--class-label", "1", "--save-latents",
                           str(tmp_path / "x.safetensors"), "--registry", reg)
    assert code == 2 and "'orphan'" in err and "plugin: dti" in " ".join(err.split())
    code, out, _ = run_cli(capsys, "pairs", "dit-xl-2-256", "--registry", reg)  # listed as a prior that cannot pair
    flat = " ".join(out.split())
    assert code == 0 and "orphan" in flat and "no installed plugin provides" in flat


def test_a_path_naming_a_file_suggests_file(tmp_path, dit_folder):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    reg = registry(tmp_path, f"""
        a-file:
          plugin: dit
          source: {{path: {ckpt}}}
          latent_space: {tiny_space(dit_folder)}
          resolution: 16
    """)
    with pytest.raises(WeightsUnavailable) as info:
        priorswap.load_pair("a-file", registry_files=[reg])
    message = str(info.value)
    assert "'a-file'" in message and f"{ckpt} is a file, not a model folder" in message
    assert f"{{path: {tmp_path}, file: model.safetensors}}" in message and "does not exist" not in message


@pytest.mark.parametrize(("plugin", "has"), [("stable_diffusion", "unet/, scheduler/"), ("pixart", "transformer/")])
def test_the_wrong_plugin_for_a_folder_is_named(tmp_path, dit_folder, plugin, has):
    """A DiT folder loaded as another family: no "download again", no traceback (pixart's transformer class
    raises NotImplementedError on a DiT config), but the expected layout and the entry's plugin."""
    reg = registry(tmp_path, f"""
        mislabelled:
          plugin: {plugin}
          roles: [prior]
          source: {{path: {dit_folder}}}
          latent_space: {tiny_space(dit_folder)}
          resolution: 16
    """)
    with pytest.raises(WeightsUnavailable) as info:
        priorswap.load_pair(str(dit_folder), prior="mislabelled", registry_files=[reg])
    message = str(info.value)
    assert f"{dit_folder} does not look like a {plugin} model" in message and has in message
    assert "names DiTPipeline, a dit model" in message and f"`plugin: {plugin}`" in message
    assert "'mislabelled'" in message and "may be wrong" in message and "download" not in message


def test_a_damaged_local_folder_is_not_sent_to_the_hub(tmp_path, dit_folder):
    folder = tmp_path / "damaged"
    shutil.copytree(dit_folder, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WeightsUnavailable) as info:
        priorswap.load_pair(str(folder))
    message = str(info.value)
    assert f"could not load '{folder}' (dit) from {folder}: OSError" in message
    assert "save or copy it again" in message and "download" not in message


# 12: a prior-only entry is not a model


def test_a_prior_only_entry_cannot_be_sampled(tmp_path, capsys):
    for args in (("tasks", "--model", "sd-1.5"),
                 ("sample", "--model", "sd-1.5", "--save-latents", str(tmp_path / "x.safetensors"))):
        code, _, err = run_cli(capsys, *args)
        flat = " ".join(err.split())
        assert code == 2 and "'sd-1.5' is a prior only (its registry entry lists roles: prior)" in flat, flat
        assert "--prior sd-1.5" in flat and "None" not in flat


def test_an_entry_without_a_task_says_so(tmp_path, dit_folder):
    from priorswap.loading import task_of
    from priorswap.registry import ModelEntry, Source

    entry = ModelEntry(plugin="stable_diffusion", roles=["model"], source=Source(path=str(dit_folder)),
                       latent_space="sd-kl-f8", resolution=16)
    with pytest.raises(PriorswapError, match="names no `task`, and its model family 'stable_diffusion' has no "
                                             "default task"):
        task_of(entry, "no-task", priorswap.get_plugins())

