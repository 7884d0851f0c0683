"""The example third-party plugin (examples/priorswap-example-plugin), loaded through its entry point,
and docs/plugins.md kept honest: every hook documented with its signature, its code blocks run."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from priorswap import hookspecs
from priorswap.plugin_manager import Plugins

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "priorswap-example-plugin"
DOCS = ROOT / "docs" / "plugins.md"
MODULE = "priorswap_example"


@pytest.fixture
def example_installed(monkeypatch, tmp_path):
    """Puts the example on sys.path with a *.dist-info declaring its entry point, as `pip install`
    would; everything (sys.path, sys.modules, import caches) is restored afterwards."""
    site = tmp_path / "site"
    info = site / "priorswap_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: priorswap-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[priorswap]\nexample = {MODULE}\n")
    monkeypatch.syspath_prepend(str(EXAMPLE))  # also invalidates the import caches
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop(MODULE, None)
    importlib.invalidate_caches()


@pytest.fixture
def plugins(example_installed) -> Plugins:
    found = Plugins.discover()
    assert not found.failures, found.failures
    return found


def _make_folder(path: Path, seed: int, num_classes: int = 4) -> Path:
    """A tiny random class-conditional UNet2DModel folder (8×8, 4 channels) in the plugin's layout."""
    from diffusers import DDIMScheduler, UNet2DModel

    example = importlib.import_module(MODULE)
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        num_class_embeds=num_classes + 1,  # the extra, last embedding is the null class
    )
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    return example.save_pretrained(path, unet, scheduler)


@pytest.fixture
def folders(example_installed, tmp_path) -> tuple[Path, Path]:
    return _make_folder(tmp_path / "model", seed=0), _make_folder(tmp_path / "prior", seed=1)


# --- discovery -----------------------------------------------------------------------------------


def test_entry_point_is_visible(example_installed):
    eps = importlib.metadata.entry_points(group="priorswap")
    assert ("example", MODULE) in {(ep.name, ep.value) for ep in eps}


def test_discover_finds_the_plugin_its_family_and_task(plugins):
    assert "example" in plugins.names()
    family = plugins.family("example-unet")
    assert "family example-unet" in plugins.registered_by("example")
    assert family.default_task == "example-class"
    assert plugins.family_for_pipeline("ExampleClassUNetPipeline") is family
    assert plugins.tasks["example-class"] == f"{MODULE}:ExampleClassTask"
    assert "task example-class" in plugins.registered_by("example")


def test_priorswap_plugins_restricts_discovery(example_installed, monkeypatch):
    monkeypatch.setenv("PRIORSWAP_PLUGINS", "example")
    found = Plugins.discover()
    assert found.names() == ["example"]
    assert set(found.families) == {"example-unet"}


def test_registering_imports_no_torch(example_installed):
    import subprocess

    code = (
        "import sys; from priorswap.plugin_manager import Plugins; import priorswap_example as m; "
        "p = Plugins(); p.add(m, 'example'); assert 'example-unet' in p.families; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'"
    )
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_add_and_remove(example_installed):
    import priorswap_example

    found = Plugins()
    found.add(priorswap_example, "example")
    assert "example-unet" in found.families and "example-class" in found.tasks
    found.remove("example")
    assert "example-unet" not in found.families and "example-class" not in found.tasks
    assert "example" not in found.names()


# --- sampling through the public API -------------------------------------------------------------


def test_describe_recognises_a_local_folder(folders):
    import priorswap_example

    fields = priorswap_example.describe(folders[0])
    assert fields["latent_space"] == {"channels": 4, "downsample": 1, "family": "pixels"}
    assert fields["resolution"] == 8 and fields["parameterization"] == "epsilon"
    assert fields["schedule"]["beta_schedule"] == "linear"


def test_cfg_sampling_is_shaped_finite_and_deterministic(plugins, folders):
    import priorswap

    model, _ = folders
    pair = priorswap.load_pair(str(model), prior=str(model), plugins=plugins)
    assert pair.task.name == "example-class"
    assert pair.model.denoiser.null_class == 4

    def run(seed):
        return pair.sample(class_label=[1, 2], guidance="cfg", scale=2.0, steps=4, seed=seed)

    first = run(0)
    assert first.latents.shape == (2, 4, 8, 8)
    assert torch.isfinite(first.latents).all()
    assert first.images is None  # 4 channels: not an RGB pixel model
    assert first.forward_calls == {"model": 4}  # both branches batched into one forward per step
    assert torch.equal(first.latents, run(0).latents)
    assert not torch.allclose(first.latents, run(1).latents)


def test_prior_swap_with_another_network_differs_from_cfg(plugins, folders):
    import priorswap

    model, prior = folders
    pair = priorswap.load_pair(str(model), prior=str(prior), plugins=plugins)
    assert pair.plan is not None and pair.plan.ok and pair.plan.adapters == []
    kwargs = dict(class_label=[1, 2], scale=2.0, steps=4, seed=0)
    swapped = pair.sample(guidance="prior-swap", **kwargs)
    cfg = pair.sample(guidance="cfg", **kwargs)
    assert swapped.forward_calls == {"model": 4, "prior": 4}
    assert torch.isfinite(swapped.latents).all()
    assert not torch.allclose(swapped.latents, cfg.latents, atol=1e-4)


def test_class_labels_are_checked(plugins, folders):
    import priorswap

    pair = priorswap.load_pair(str(folders[0]), plugins=plugins)
    with pytest.raises(priorswap.PriorswapError, match=r"class labels must be in \[0, 3\]"):
        pair.sample(class_label=[4], guidance="cfg", scale=2.0, steps=1)


# --- docs/plugins.md ------------------------------------------------------------------------------


def _hookspecs() -> dict[str, str]:
    """Every hookspec in priorswap.hookspecs → its signature as written, without annotations."""
    specs = {}
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(fn, f"{hookspecs.hookspec.project_name}_spec"):
            params = ", ".join(inspect.signature(fn).parameters)
            specs[name] = f"{name}({params})"
    return specs


def test_every_hook_is_documented_with_its_signature():
    docs = DOCS.read_text()
    specs = _hookspecs()
    assert {"register_denoisers", "register_tasks", "register_adapters", "register_registry_files"} <= set(specs)
    headings = dict(re.findall(r"^#+ `((\w+)\([^)]*\))`\s*$", docs, flags=re.M))
    documented = {name: signature for signature, name in headings.items()}
    assert documented == specs
    mentioned = set(re.findall(r"\bregister_\w+", docs))
    assert mentioned <= set(specs), f"docs mention hooks that do not exist: {mentioned - set(specs)}"


def _runnable_blocks(text: str) -> list[str]:
    """```python blocks, except those right after a `<!-- skip -->` line."""
    blocks = []
    pattern = r"(?:^(<!-- skip -->)\s*\n)?^```python\n(.*?)^```"
    for skip, body in re.findall(pattern, text, flags=re.M | re.S):
        if not skip:
            blocks.append(textwrap.dedent(body))
    return blocks


def test_docs_yaml_blocks_are_valid_registry_files():
    from priorswap.registry import RegistryFile

    blocks = re.findall(r"^```yaml\n(.*?)^```", DOCS.read_text(), flags=re.M | re.S)
    assert blocks
    for block in blocks:
        RegistryFile.model_validate(yaml.safe_load(block))


def test_docs_code_blocks_run(example_installed, monkeypatch, tmp_path):
    """The runnable examples share one namespace, in order, run in an empty working directory."""
    blocks = _runnable_blocks(DOCS.read_text())
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_plugins"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{DOCS.name} block {i + 1}", "exec"), namespace)
        except Exception as e:
            pytest.fail(f"{DOCS.name}, python block {i + 1} failed: {type(e).__name__}: {e}\n{code}")
