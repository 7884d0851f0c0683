"""Plugin discovery through entry points: failures are reported and the rest keeps working."""

import importlib
import re
import sys
import textwrap

import pytest
from clihelp import run_cli

from priorswap import plugin_manager
from priorswap.plugin_manager import Plugins

BROKEN_IMPORT = "raise RuntimeError('this plugin is broken on purpose')\n"
BROKEN_HOOK = textwrap.dedent(
    """
    from priorswap import hookimpl

    @hookimpl
    def register_denoisers(register):
        raise ValueError('registration exploded')

    @hookimpl
    def register_tasks(register):
        register('half-working', 'nowhere:Task')
    """
)


def install_fake_distribution(root, name, modules):
    """A dist-info with an entry point in the `priorswap` group, found by importlib.metadata."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{m} = {m}\n" for m in modules)
    (info / "entry_points.txt").write_text(f"[priorswap]\n{lines}")


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "broken-plugins", {"broken_import": BROKEN_IMPORT, "broken_hook": BROKEN_HOOK})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(plugin_manager, "_CACHE", None)
    yield
    for name in ("broken_import", "broken_hook"):
        sys.modules.pop(name, None)
    plugin_manager._CACHE = None


def test_built_in_plugins_load_through_entry_points():
    plugins = Plugins.discover()
    assert {"dit", "stable_diffusion"} <= set(plugins.names())
    assert plugins.family("dit").pipeline_classes == ("DiTPipeline",)
    assert plugins.family_for_pipeline("StableDiffusionPipeline").name == "stable_diffusion"
    assert not plugins.failures


def test_broken_plugins_are_reported_and_the_rest_works(broken_plugins, capsys):
    plugins = Plugins.discover()
    failures = {(f.plugin, f.stage) for f in plugins.failures}
    assert failures == {("broken_import", "import"), ("broken_hook", "register_denoisers")}
    assert "dit" in plugins.families and "half-working" in plugins.tasks

    code, out, _ = run_cli(capsys, "doctor")
    assert code == 1
    assert "broken_import" in out and "broken on purpose" in out and "registration exploded" in out
    flat = " ".join(out.split())
    assert "plugin broken_hook, task half-working: the plugin reference 'nowhere:Task' does not resolve" in flat
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "dit-xl-2-256" in out
    # an id that a failed plugin might have registered: the error names the failures
    code, _, err = run_cli(capsys, "sample", "--model", "tiny-from-a-broken-plugin", "--out", "x.png")
    assert code == 2 and "unknown model id" in err and "broken_import" in err and "priorswap doctor" in err


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("priorswap.family:resolve_ref", None),
        ("priorswap.family:lod", "priorswap.family has no attribute 'lod'"),
        ("priorswap.no_such_module:load", "importing priorswap.no_such_module failed (ModuleNotFoundError"),
        ("priorswap.family", "is not of the form 'package.module:attr'"),
    ],
)
def test_lazy_references_resolve_or_say_which_string_is_wrong(ref, message):
    from priorswap.errors import PluginError
    from priorswap.family import resolve_ref

    if message is None:
        assert resolve_ref(ref) is resolve_ref
    else:
        with pytest.raises(PluginError, match=re.escape(message)):
            resolve_ref(ref)


def test_env_var_restricts_plugins(broken_plugins, monkeypatch):
    monkeypatch.setenv("PRIORSWAP_PLUGINS", "dit")
    plugins = Plugins.discover()
    assert plugins.names() == ["dit"] and not plugins.failures
    monkeypatch.setenv("PRIORSWAP_PLUGINS", "")
    assert Plugins.discover().names() == []


def test_env_var_names_that_match_no_plugin_are_reported(monkeypatch, capsys):
    monkeypatch.setenv("PRIORSWAP_PLUGINS", "dit, bogus")
    plugins = Plugins.discover()
    assert plugins.names() == ["dit"]
    assert [(f.plugin, f.stage) for f in plugins.failures] == [("bogus", "PRIORSWAP_PLUGINS")]
    assert "no installed plugin is called that" in plugins.failures[0].error and "dit" in plugins.failures[0].error
    assert "bogus" in plugins.hint()

    monkeypatch.setenv("PRIORSWAP_PLUGINS", "bogus")
    monkeypatch.setattr(plugin_manager, "_CACHE", None)
    code, out, _ = run_cli(capsys, "doctor")
    out = " ".join(out.split())
    assert code == 1 and "all good" not in out and "problems found" in out
    assert "bogus" in out and "not installed" in out and "correct the name or unset PRIORSWAP_PLUGINS" in out


def test_missing_family_names_the_broken_plugins(broken_plugins):
    plugins = Plugins.discover()
    with pytest.raises(plugin_manager.PluginError, match="broken_import"):
        plugins.family("no-such-family")
    with pytest.raises(plugin_manager.PluginError, match=r"did you mean toy\? Families: .*toy \(plugin toy\)"):
        plugins.family("toys")


def test_register_and_remove_a_plugin_object():
    from priorswap import Family, hookimpl

    class Inline:
        @hookimpl
        def register_denoisers(self, register):
            register(Family(name="inline", load="x:y", pipeline_classes=("InlinePipeline",)))

    plugins = Plugins.discover()
    plugins.add(Inline(), "inline")
    assert plugins.family_for_pipeline("InlinePipeline").name == "inline"
    plugins.remove("inline")
    assert "inline" not in plugins.families


def test_a_misspelled_hook_is_a_failure_not_silence():
    from priorswap import Family, hookimpl

    class Typo:
        @hookimpl
        def register_denoiser(self, register):  # missing "s"
            register(Family(name="typo", load="x:y"))

    plugins = Plugins.discover()
    plugins.add(Typo(), "typo")
    assert [(f.plugin, f.stage) for f in plugins.failures] == [("typo", "register")]
    assert "unknown hook" in plugins.failures[0].error and "typo" not in plugins.names()


def test_remove_forgets_everything_the_plugin_registered():
    from priorswap import hookimpl

    class Everything:
        @hookimpl
        def register_adapters(self, register):
            register(lambda a, b: None)

        @hookimpl
        def register_registry_files(self, register):
            register("/nowhere.yaml")

    plugins = Plugins.discover()
    before = (len(plugins.bridges), len(plugins.registry_files))
    plugins.add(Everything(), "everything")
    assert (len(plugins.bridges), len(plugins.registry_files)) == (before[0] + 1, before[1] + 1)
    plugins.remove("everything")
    assert (len(plugins.bridges), len(plugins.registry_files)) == before


def test_bad_registrations_are_recorded_and_skipped_not_fatal(capsys, monkeypatch):
    from priorswap import hookimpl
    from priorswap.adapters import PairSpec
    from priorswap.latents import LatentSpace

    class Sloppy:
        @hookimpl
        def register_adapters(self, register):
            register(42)  # neither callable nor "module:attr": recorded, the next one still registers
            register("math:no_such_bridge")  # lazy, does not resolve: found by doctor, skipped when pairing

        @hookimpl
        def register_tasks(self, register):
            register("not-a-task", dict)  # a class, but not a Task
            register("lazy-not-a-task", "collections:OrderedDict")

    plugins = Plugins.discover()
    plugins.add(Sloppy(), "sloppy")
    stages = sorted((f.plugin, f.stage) for f in plugins.failures)
    assert stages == [("sloppy", "register_adapters"), ("sloppy", "register_tasks")]
    assert "got 42" in " ".join(f.error for f in plugins.failures)
    assert "not-a-task" not in plugins.tasks and "lazy-not-a-task" in plugins.tasks
    with pytest.raises(plugin_manager.PluginError, match="plugin sloppy registers the task 'lazy-not-a-task'"):
        plugins.task("lazy-not-a-task")

    from priorswap.adapters import plan_pair

    a, b = LatentSpace("a", 4, family="ae-1"), LatentSpace("b", 3, family="ae-2")
    plan = plan_pair(PairSpec("m", a, "s", "epsilon"), PairSpec("p", a, "s", "epsilon"), plugins.bridges)
    assert plan.ok  # same space: the broken bridge is never needed
    plan = plan_pair(PairSpec("m", a, "s", "epsilon"), PairSpec("p", b, "s", "epsilon"), plugins.bridges)
    assert not plan.ok and "bridge math:no_such_bridge of plugin sloppy raised PluginError" in plan.reason

    monkeypatch.setattr(plugin_manager, "_CACHE", plugins)
    code, out, _ = run_cli(capsys, "doctor")
    out = " ".join(out.split())
    assert code == 1 and "plugin sloppy, bridge:" in out and "plugin sloppy, task lazy-not-a-task:" in out
    assert "not a priorswap.Task subclass" in out and "problems found" in out


def test_a_plugins_broken_registry_file_is_skipped_not_fatal(tmp_path, capsys, monkeypatch):
    from priorswap import hookimpl

    (tmp_path / "broken.yaml").write_text("models: [this is: not a mapping\n")
    (tmp_path / "half.yaml").write_text(textwrap.dedent("""
        models:
          half-lost:
            plugin: toy
            roles: [prior]
            latent_space: no-such-space
            resolution: 16
            source: {path: /nowhere}
    """))

    class ShipsRegistries:
        @hookimpl
        def register_registry_files(self, register):
            register(tmp_path / "broken.yaml")
            register(tmp_path / "half.yaml")

    plugins = Plugins.discover()
    plugins.add(ShipsRegistries(), "ships")
    monkeypatch.setattr(plugin_manager, "_CACHE", plugins)
    code, out, err = run_cli(capsys, "list")
    err = " ".join(err.split())
    assert code == 0 and "toy-digits-base" in out and "half-lost" not in out
    assert "broken.yaml is not valid YAML" in err and "whole file is skipped" in err
    assert "unknown latent space 'no-such-space'" in err and "entry 'half-lost' is skipped" in err
    code, out, _ = run_cli(capsys, "doctor")
    out = " ".join(out.split())
    assert code == 1 and out.count("plugin ships, registry file skipped") == 2


def test_an_unknown_latent_space_says_plugins_may_be_missing(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine.yaml"
    mine.write_text(textwrap.dedent("""
        models:
          my-model:
            plugin: toy
            roles: [model]
            latent_space: toy-pixels
            resolution: 16
            source: {path: /nowhere}
    """))
    monkeypatch.setenv("PRIORSWAP_PLUGINS", "dit")
    monkeypatch.setattr(plugin_manager, "_CACHE", Plugins.discover())
    code, _, err = run_cli(capsys, "list", "--registry", str(mine))
    err = " ".join(err.split())
    assert code == 2 and "unknown latent space 'toy-pixels'" in err
    assert "the plugin that defines it may not be loaded" in err and "PRIORSWAP_PLUGINS='dit'" in err


def test_a_task_input_named_like_a_sampling_option_is_refused():
    from priorswap import Task, TaskInputs, hookimpl

    class Inputs(TaskInputs):
        label: int = 0
        steps: int = 1  # would be taken as the number of sampling steps
        out_dir: str = ""  # would be taken as --out-dir

    class Clashing(Task):
        name = "clashing"

        def batch_size(self, inputs):
            return 1

        def conditions(self, inputs, denoiser):
            return {}

    Clashing.Inputs = Inputs

    class Registers:
        @hookimpl
        def register_tasks(self, register):
            register("clashing", Clashing)

    plugins = Plugins.discover()
    plugins.add(Registers(), "registers")
    with pytest.raises(plugin_manager.PluginError, match=r"task 'clashing' has inputs named like sampling "
                                                         r"options \(out_dir, steps\).*rename"):
        plugins.task("clashing")


def test_doctor_marks_a_plugin_with_a_broken_reference_in_its_row(capsys, monkeypatch):
    from priorswap import hookimpl

    class Typo:
        @hookimpl
        def register_tasks(self, register):
            register("typo-task", "math:NoSuchTask")  # registers fine; resolves only when used

    plugins = Plugins.discover()
    plugins.add(Typo(), "typo_refs")
    monkeypatch.setattr(plugin_manager, "_CACHE", plugins)
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(capsys, "doctor")
    row = next(line for line in out.splitlines() if "typo_refs" in line and "│" in line)
    assert code == 1 and "1 broken reference" in row and " ok " not in row
    assert "plugin typo_refs, task typo-task:" in " ".join(out.split())
