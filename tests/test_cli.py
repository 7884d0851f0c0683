"""The command line: lazy imports, sampling outputs, and clear errors with exit code 2."""

import os
import re
import subprocess
import sys
from typing import Annotated

import numpy as np
import pytest
import torch
from clihelp import run_cli
from safetensors.torch import load_file

import priorswap


@pytest.mark.parametrize("args", [["list"], ["--help"], ["sample", "--help"]])
def test_light_commands_do_not_import_torch(args):
    code = (
        "import sys\n"
        "from priorswap.cli import app\n"
        f"app({args!r}, standalone_mode=False)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("command", "shown"), [
    ("eval", ["--samples-per-item", "openai/clip-vit-large-patch14", "--allow-pickle"]),
    ("sample", ["--image-guidance", "--save-latents", "--allow-pickle", "--offload"]),
    ("video", ["--end-image", "--video-fps", "--allow-pickle"]),
])
def test_help_fits_80_columns_without_cutting_anything(command, shown):
    """At 80 columns no option name and no help text of `COMMAND --help` is cut off with an ellipsis."""
    proc = subprocess.run([sys.executable, "-m", "priorswap.cli", command, "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "80", "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout and all(s in proc.stdout for s in shown), proc.stdout



def test_off_by_default_flags_have_no_negative_twin():
    """A flag that is off unless given (`--offline`, `--allow-pickle`, `--offload`, ...) is one option, not
    `--x/--no-x`: the twin says nothing and doubles the width of the help's option column."""
    import typer

    from priorswap.cli import app
    from priorswap.plugin_manager import get_plugins

    get_plugins().add_commands(app)  # as main() does
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    twins = []
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        commands = [command.get_command(ctx, n) for n in command.list_commands(ctx)] \
            if hasattr(command, "list_commands") else [command]
        for sub in commands:
            twins += [f"{name}: {'/'.join(p.opts + p.secondary_opts)}" for p in sub.params
                      if getattr(p, "is_flag", False) and p.secondary_opts and not p.default]
    assert "video" in root.list_commands(ctx)  # plugin commands are checked too
    assert not twins, twins


def test_help_shows_no_value_placeholder_for_a_flag(capsys, monkeypatch):
    """Every command's help, plugins' included: a flag shows no placeholder (typer ≥ 0.2x prints `<bool>`, as
    if `--offline` took a value), a repeatable option the item it takes (`<str>`, not `<list[str]>`)."""
    import typer

    from priorswap.cli import app
    from priorswap.plugin_manager import get_plugins

    monkeypatch.setenv("COLUMNS", "200")
    get_plugins().add_commands(app)
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    paths = [[]]
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        paths += [[name]] + [[name, sub] for sub in getattr(command, "commands", {})]
    assert ["toy", "train"] in paths
    shown = []
    for path in paths:
        code, out, err = run_cli(capsys, *path, "--help")
        assert code == 0, err
        shown += [f"{' '.join(path)}: {line.strip()}" for line in out.splitlines()
                  if "<bool>" in line or "--" in line and "<list[" in line]  # an argument keeps `files... <list[Path]>`
        if path == ["sample"]:
            assert re.search(r"--offline +Never contact", out) and re.search(r"--registry +<str> +Extra", out), out
    assert not shown, shown


def test_sample_writes_png_and_latents(tmp_path, capsys, dit_folder, dit_prior_folder):
    png, lat = tmp_path / "out.png", tmp_path / "z.safetensors"
    code, _, err = run_cli(
        capsys, "sample", "--model", str(dit_folder), "--prior", str(dit_prior_folder), "--class-label", "207",
        "--class-label", "3", "--guidance", "1.5", "--steps", "5", "--seed", "4", "--out", str(png),
        "--save-latents", str(lat),
    )
    assert code == 0, err
    latents = load_file(lat)
    assert list(latents) == ["latents"]
    expected = priorswap.load_pair(str(dit_folder), prior=str(dit_prior_folder)).sample(
        class_label=[207, 3], scale=1.5, steps=5, seed=4, decode=False
    )
    assert torch.equal(latents["latents"], expected.latents)
    from PIL import Image

    assert Image.open(png).size == (16 * 2 + 6, 16 + 4)  # a 2×1 grid with 2-pixel padding


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--class-label", "1000"], "class labels must be in [0, 999]"),
        (["--colour", "red"], "unknown option(s) --colour"),
        (["--class-label", "x"], "--class-label"),
        (["--method", "prior-swap", "--class-label", "1"], "needs a prior"),
        (["--class-label", "1", "--interval", "3"], "LO,HI"),
        (["--class-label", "1", "--dtype", "fp8"], "--dtype takes fp32, fp16 or bf16"),
        (["--class-label", "1", "--seeds", "0,1,0"], "--seeds repeats 0: give each value once"),
        (["--class-label", "1", "--autocast", "int8"], "--autocast takes fp32, fp16 or bf16"),
        (["--class-label", "1", "--seeds", "1,x"], "--seeds takes comma-separated integers"),
        (["--class-label", "1", "--num-samples", "0"], "--num-samples (--batch) must be at least 1"),
        (["--class-label", "1", "--batch", "0"], "--num-samples (--batch) must be at least 1"),
        (["--class-label", "1", "--steps", "-5"], "--steps must be at least 1, got -5"),
        (["--class-label", "1", "--steps", "0"], "--steps must be at least 1, got 0"),
        (["--class-label", "1", "--steps", "1001"], "--steps must be from 1 to 1000 (the model's training timesteps)"),
        (["--class-label", "1", "--method", "bogus"], "--method must be one of cfg, prior-swap"),
        (["--class-label", "1", "--guidance", "nan"], "--guidance must be a finite number"),
        (["--class-label", "1", "--rescale", "-3"], "--rescale must be between 0 and 1"),
        (["--class-label", "1", "--interval", "5,1"], "LO ≤ HI"),
        (["--class-label", "1", "--eta", "-1"], "--eta must be between 0 and 1"),
        (["--class-label", "1", "--match", "bogus"], "--match must be one of continuous, nearest"),
        (["--class-label", "1", "--autocast", "fp32"], "--autocast takes fp16 or bf16"),
        (["--class-label", "1", "--device", "bogus"], "--device bogus is not a device"),
        (["--class-label", "1", "--device", "cuda"], "no CUDA device here"),
        (["--class-label", "1", "--device", "meta"], "--device meta: meta holds no data"),
        (["--class-label", "1", "--device", "xpu"], "--device xpu: no xpu device here"),
        (["--class-label", "1", "--prior-dtype", "fp16"], "--prior-dtype needs --prior"),
        (["--class-label", "1", "--image-guidance", "3"], "applies to dual guidance only"),
        (["--class-label", "1", "--scheduler", "heun"], "--scheduler must be one of ddim, euler, native"),
    ],
)
def test_bad_input_exits_2_without_output(tmp_path, capsys, dit_folder, args, message):
    png = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--out", str(png), *args)
    assert code == 2
    assert message in " ".join(err.split())
    assert list(tmp_path.iterdir()) == []


def test_outputs_are_checked_before_loading_and_a_failed_run_leaves_none(tmp_path, capsys, dit_folder, monkeypatch):
    import priorswap.media

    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "dir.png").mkdir()
    for args, message in (
        ([], "nothing would be written"),
        (["--out", str(blocker / "x.png")], "is a file, not a folder"),
        (["--out-dir", str(blocker)], "is a file, not a folder"),
        (["--out", str(tmp_path / "dir.png")], "is a folder; give a file name"),
        (["--save-latents", "/proc/l.safetensors"], "cannot write in /proc"),
    ):
        code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--class-label", "1", *args)
        assert code == 2 and message in " ".join(err.split()), (args, err)
        assert "loading" not in err  # refused before any weights load
    # a write that fails after others succeeded removes them: no partial set of outputs
    real_write = priorswap.media.write_atomic

    def disk_full(path, write):  # everything before the last image is written, then the disk is full
        if path.name == "seed1-00.png":
            raise OSError(28, "No space left on device", str(path))
        real_write(path, write)

    monkeypatch.setattr(priorswap.media, "write_atomic", disk_full)
    lat, grid, each = tmp_path / "z.safetensors", tmp_path / "g.png", tmp_path / "each"
    code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--class-label", "1", "--steps", "2",
                           "--seeds", "0,1", "--save-latents", str(lat), "--out", str(grid), "--out-dir", str(each))
    assert code == 2 and "could not write" in err and "No space left on device" in err and "Traceback" not in err
    assert not lat.exists() and not grid.exists() and not each.exists()


def test_a_single_value_option_given_twice_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "sample", "--model", "toy-digits-view", "--source-index", "3", "--angle", "30",
                           "--angle", "-30", "--out", str(tmp_path / "v.png"))
    assert code == 2 and "--angle takes one value" in err and not (tmp_path / "v.png").exists()


def test_damaged_local_models_exit_2(tmp_path, capsys, dit_folder):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dit_folder, broken)
    (broken / "model_index.json").write_text("{not json")
    code, _, err = run_cli(capsys, "pairs", str(broken))
    assert code == 2 and "is not valid JSON" in err
    truncated = tmp_path / "truncated"
    shutil.copytree(dit_folder, truncated)
    weights = next((truncated / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run_cli(capsys, "sample", "--model", str(truncated), "--class-label", "1", "--steps", "1",
                           "--out", str(tmp_path / "t.png"))
    assert code == 2 and "could not load" in err and "damaged" in err and not (tmp_path / "t.png").exists()
    fake = tmp_path / "fake.ckpt"
    fake.write_bytes(b"\x80\x04not a pickle at all")
    code, _, err = run_cli(capsys, "pairs", str(fake), "--allow-pickle")
    assert code == 2 and "is not a readable PyTorch checkpoint" in err


@pytest.mark.parametrize("kind", ["dit", "sd"])
def test_damaged_or_missing_component_configs_exit_2(kind, tmp_path, capsys, dit_folder, sd_folder):
    import shutil

    source, network = (dit_folder, "transformer") if kind == "dit" else (sd_folder, "unet")
    for name, damage, expect in [
        ("scheduler/scheduler_config.json", lambda p: p.write_text("{broken"), "is not valid JSON"),
        (f"{network}/config.json", lambda p: p.unlink(), "is missing"),
        ("vae/config.json", lambda p: p.write_text("[1, 2]"), "not an object"),
    ]:
        folder = tmp_path / f"{kind}-{name.replace('/', '-')}"
        shutil.copytree(source, folder)
        damage(folder / name)
        code, _, err = run_cli(capsys, "pairs", str(folder))
        assert code == 2 and expect in err and name.split("/")[0] in err, err
        assert "Traceback" not in err


def test_unknown_model_suggests(capsys):
    code, _, err = run_cli(capsys, "sample", "--model", "dit-xl2-256", "--class-label", "1", "--out", "x.png")
    assert code == 2 and "dit-xl-2-256" in err


def test_wrong_suffix_is_refused(tmp_path, capsys, dit_folder):
    code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--out", str(tmp_path / "a.jpg"))
    assert code == 2 and f"--out {tmp_path / 'a.jpg'} should end in .png" in " ".join(err.split())


def test_folder_without_model_index(tmp_path, capsys):
    code, _, err = run_cli(capsys, "pairs", str(tmp_path))
    assert code == 2 and "model_index.json" in err


def test_unknown_command_exits_2(capsys):
    code, _, err = run_cli(capsys, "no-such-command")
    assert code == 2 and "No such command" in err


def test_help_with_plugin_commands_does_not_import_torch():
    code = (
        "import sys\n"
        "sys.argv = ['priorswap', '--help']\n"
        "from priorswap.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "toy" in proc.stdout


def test_several_seeds_and_samples_write_a_grid_and_one_file_each(tmp_path, capsys, dit_folder, dit_prior_folder):
    lat, folder = tmp_path / "z.safetensors", tmp_path / "each"
    code, _, err = run_cli(
        capsys, "sample", "--model", str(dit_folder), "--prior", str(dit_prior_folder), "--class-label", "207",
        "--class-label", "3", "--steps", "3", "--seeds", "4,5", "--batch", "2", "--out-dir", str(folder),
        "--save-latents", str(lat), "--out", str(tmp_path / "grid.png"),
    )
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [f"seed{s}-{i:02d}.png" for s in (4, 5) for i in range(4)]
    # the grid has one row per class label, its samples seed by seed: label 207 is seed4-00, seed4-01, seed5-00,
    # seed5-01, label 3 is seed4-02, seed4-03, seed5-02, seed5-03
    from PIL import Image

    from priorswap.provenance import read_record

    record = read_record(tmp_path / "grid.png")
    rows = [[f"seed{s}-{i:02d}" for s in (4, 5) for i in (2 * j, 2 * j + 1)] for j in (0, 1)]
    assert record["grid"] == {"rows": 2, "columns": 4, "row": "task input"} and record["images"] == sum(rows, [])
    assert read_record(lat)["images"] == [f"seed{s}-{i:02d}" for s in (4, 5) for i in range(4)]  # latents: seed by seed
    grid = torch.tensor(np.asarray(Image.open(tmp_path / "grid.png")))
    cell = torch.tensor(np.asarray(Image.open(folder / "seed4-00.png")))
    h, w = cell.shape[:2]
    assert grid.shape[:2] == (2 * (h + 2) + 2, 4 * (w + 2) + 2)
    for r, names in enumerate(rows):
        for c, name in enumerate(names):
            top, left = 2 + r * (h + 2), 2 + c * (w + 2)
            expected = torch.tensor(np.asarray(Image.open(folder / f"{name}.png")))
            assert torch.equal(grid[top : top + h, left : left + w], expected), name
    latents = load_file(lat)["latents"]
    pair = priorswap.load_pair(str(dit_folder), prior=str(dit_prior_folder))
    for k, s in enumerate((4, 5)):
        expected = pair.sample(class_label=[207, 3], steps=3, seed=s, decode=False, num_samples=2).latents
        assert torch.equal(latents[4 * k : 4 * k + 4], expected)
    # rows are input by input: both samples of label 207 first, and they differ (own noise)
    one = pair.sample(class_label=[207], steps=3, seed=4, decode=False, num_samples=2).latents
    assert not torch.allclose(one[0], one[1])


def test_offload_gives_the_same_latents(dit_folder, dit_prior_folder):
    plain = priorswap.load_pair(str(dit_folder), prior=str(dit_prior_folder))
    offloaded = priorswap.load_pair(str(dit_folder), prior=str(dit_prior_folder), offload=True, device="cpu")
    assert hasattr(offloaded.model.denoiser.net, "_hf_hook")  # accelerate's hook is installed
    a = plain.sample(class_label=[1], steps=3, seed=0, decode=False).latents
    b = offloaded.sample(class_label=[1], steps=3, seed=0, decode=False).latents
    assert torch.allclose(a, b, atol=1e-6)


def test_model_and_prior_dtypes_are_separate(dit_folder, dit_prior_folder):
    pair = priorswap.load_pair(str(dit_folder), prior=str(dit_prior_folder), prior_dtype=torch.float64)
    assert pair.model.denoiser.dtype == torch.float32 and pair.prior.denoiser.dtype == torch.float64
    out = pair.sample(class_label=[1], steps=2, seed=0, decode=False)
    assert out.latents.dtype == torch.float32 and torch.isfinite(out.latents).all()


def test_outputs_get_the_usual_file_permissions(tmp_path):
    import os
    import stat

    from priorswap.media import write_atomic_safetensors

    write_atomic_safetensors(tmp_path / "z.safetensors", {"latents": torch.zeros(1)})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "z.safetensors").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["z.safetensors"]  # no temporary file left


def test_autocast_runs_mixed_precision(tmp_path, capsys, dit_folder):
    from safetensors.torch import load_file

    outs = {}
    for name, extra in (("plain", []), ("mixed", ["--autocast", "bf16"])):
        path = tmp_path / f"{name}.safetensors"
        code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--class-label", "3", "--steps", "3",
                               "--save-latents", str(path), *extra)
        assert code == 0, err
        outs[name] = load_file(path)["latents"]
    assert outs["mixed"].dtype == torch.float32
    rel = (outs["mixed"] - outs["plain"]).abs().mean() / outs["plain"].abs().mean()
    assert 0 < rel < 0.05


def test_tasks_lists_the_options_of_a_models_task(capsys):
    code, out, _ = run_cli(capsys, "tasks", "--model", "toy-digits-view")
    assert code == 0 and "task toy-view" in out and "--source-index" in out and "--angle" in out
    assert "--class-label" not in out  # only this model's task
    code, out, _ = run_cli(capsys, "tasks")
    assert code == 0 and all(f"task {name}" in out for name in ("toy-class", "toy-view", "toy-edit", "novel-view"))
    code, _, err = run_cli(capsys, "tasks", "--model", "no-such-model")
    assert code == 2 and "unknown model id" in err


def test_list_options_refuse_repeats_and_pairs_checks_match(capsys):
    for args, message in (
        (["--seeds", "0,0"], "--seeds repeats 0"),
        (["--guidance", "2,2.0"], "--guidance repeats 2.0"),
        (["--prior", "toy-digits-base,toy-digits-base"], "--prior repeats toy-digits-base"),
    ):
        code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-class", "--steps", "2", *args)
        assert code == 2 and message in err, (args, err)
    code, _, err = run_cli(capsys, "pairs", "toy-digits-class", "--prior", "toy-digits-dit-v", "--match", "foo")
    assert code == 2 and "--match" in err and "continuous" in err


def test_pairs_takes_the_model_as_argument_or_as_sample_spells_it(capsys):
    code, by_argument, _ = run_cli(capsys, "pairs", "toy-digits-class", "--prior", "toy-digits-dit-v")
    assert code == 0 and "σ-matching" in by_argument
    code, by_option, _ = run_cli(capsys, "pairs", "--model", "toy-digits-class", "--prior", "toy-digits-dit-v")
    assert code == 0 and by_option == by_argument
    code, _, err = run_cli(capsys, "pairs", "toy-digits-class", "--model", "toy-digits-base")
    assert code == 2 and "two models given" in err
    code, _, err = run_cli(capsys, "pairs")
    assert code == 2 and "which model?" in err


# ---- task inputs checked before any weights load ---------------------------------------------------------
@pytest.fixture
def no_loading(no_loading, monkeypatch):
    """As conftest's, and `load_pair` may not even be entered: task inputs are checked before it."""
    import priorswap.api

    monkeypatch.setattr(priorswap.api, "load_pair", no_loading)
    return no_loading


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        ("toy-digits-view", ["--image", "{tmp}/missing.png"], "--image (value 1): {tmp}/missing.png does not exist"),
        ("toy-digits-view", ["--image", "{tmp}/notes.png"], "{tmp}/notes.png is not an image file PIL can read"),
        ("toy-digits-edit", ["--image", "{tmp}"], "{tmp} is a folder, not an image file"),
        ("toy-digits-edit", ["--source-index", "2", "--image", "{tmp}/notes.png"], "not an image file PIL can read"),
        ("toy-digits-view", ["--source-index", "360"],
         "--source-index (value 1, got '360'): Input should be less than 360"),
        ("toy-digits-view", ["--source-index", "4", "--source-index", "-1"],
         "--source-index (value 2, got '-1'): Input should be greater than or equal to 0"),
        ("toy-digits-class", ["--class-label", "10"],
         "--class-label (value 1, got '10'): Input should be less than 10"),
    ],
)
def test_a_mistyped_task_input_is_refused_before_any_weights_load(tmp_path, capsys, no_loading, model, args,
                                                                  message):
    (tmp_path / "notes.png").write_text("not a picture")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "sample", "--model", model, "--steps", "2", "--out", str(out), *args)
    err = " ".join(err.split())
    assert code == 2 and message.replace("{tmp}", str(tmp_path)) in err and "Traceback" not in err, err
    assert not out.exists()


def test_the_toy_source_range_is_the_held_out_split():
    from priorswap.plugins.toy import data
    from priorswap.plugins.toy.tasks import TEST_DIGITS, ToyViewInputs

    assert len(data.load_digits16("test")[0]) == TEST_DIGITS
    assert ToyViewInputs(source_index=[TEST_DIGITS - 1]).source_index == [TEST_DIGITS - 1]


def test_every_image_input_of_every_task_is_checked_as_it_validates(tmp_path):
    """Fields named `image` or `..._image` of all registered tasks (Zero-1-to-3, InstructPix2Pix, Versatile
    Diffusion, DynamiCrafter, the toy tasks) refuse a file that is not an image and accept one that is."""
    from PIL import Image
    from pydantic import TypeAdapter, ValidationError

    from priorswap.family import resolve_ref
    from priorswap.plugin_manager import get_plugins

    notes, picture = tmp_path / "notes.png", tmp_path / "ok.png"
    notes.write_text("not a picture")
    Image.new("RGB", (8, 8)).save(picture)
    checked = set()
    for name, ref in get_plugins().tasks.items():
        for field_name, field in resolve_ref(ref).Inputs.model_fields.items():
            if field_name != "image" and not field_name.endswith("_image"):
                continue
            kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            adapter = TypeAdapter(kind)
            many = "list" in str(field.annotation)
            assert adapter.validate_python([picture] if many else picture) is not None
            with pytest.raises(ValidationError, match="not an image file PIL can read"):
                adapter.validate_python([notes] if many else notes)
            checked.add(name)
    assert {"novel-view", "novel-view-stable", "instruct-pix2pix", "image-variation", "image-to-video",
            "toy-view", "toy-edit"} <= checked


def test_dit_class_labels_are_checked_against_the_networks_config_before_loading(tmp_path, capsys, dit_folder,
                                                                                no_loading, monkeypatch):
    import json

    import huggingface_hub.constants

    out = tmp_path / "o.png"
    for args, message in ((["--class-label", "3", "--class-label", "1000"], "class labels must be in [0, 999]"),
                          (["--class-label", "-1"], "--class-label (value 1, got '-1'): Input should be greater than")):
        code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--out", str(out), *args)
        assert code == 2 and message in " ".join(err.split()), err
    # a registry model whose config is in the Hugging Face cache at the pinned revision: checked the same way
    entry = priorswap.Registry.load([], priorswap.get_plugins().registry_files).entry("dit-xl-2-256")
    snapshot = (tmp_path / "hub" / f"models--{entry.source.repo.replace('/', '--')}" / "snapshots"
                / entry.source.revision / "transformer")
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"num_embeds_ada_norm": 12}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code, _, err = run_cli(capsys, "sample", "--model", "dit-xl-2-256", "--class-label", "12", "--out", str(out))
    assert code == 2 and "class labels must be in [0, 11], got [12]" in " ".join(err.split()), err
    # not cached: nothing known before loading, nothing refused (the denoiser's own check remains)
    from priorswap.plugins.dit.task import ClassLabelInputs, ClassLabelTask

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    ClassLabelTask.check_inputs(ClassLabelInputs(class_label=[5000]), entry)


def test_tasks_prints_readable_types(capsys):
    code, out, _ = run_cli(capsys, "tasks")
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines()
            if line.startswith("│ --")}
    assert code == 0
    assert rows["--end-image"] == "[PATH]" and rows["--image"] in ("PATH", "PATH...")
    assert rows["--source-index"] == "INTEGER... (0 ≤ x < 360)"
    assert rows["--class-label"].startswith("INTEGER... (0 ≤ x")
    assert rows["--prompt"] == "TEXT..." and rows["--frames"] == "[INTEGER] (0 < x ≤ 64)"
    assert rows["--azimuth"] == "FLOAT"
    assert rows["--count"] == "INTEGER (1 ≤ x ≤ 64)"  # bounds of a field's own Field(ge=, le=)
    assert not any(word in out for word in ("Optional", "Annotated", "pathlib", "typing", "list["))


def test_bool_task_options_take_a_flag_a_value_or_no_flag():
    from priorswap import Task, TaskInputs
    from priorswap.cli import _parse_task_options, parse_task_inputs
    from priorswap.errors import PriorswapError

    class FlagInputs(TaskInputs):
        invert: bool = False
        count: int = 1

    class FlagTask(Task):
        name = "flag"
        Inputs = FlagInputs

        def batch_size(self, inputs):
            return 1

        def conditions(self, inputs, denoiser):
            return {}

    def parse(*argv):
        return parse_task_inputs(FlagTask, _parse_task_options(list(argv)))

    assert parse("--invert").invert is True and parse("--invert", "true").invert is True
    assert parse("--invert=false").invert is False and parse("--no-invert").invert is False
    assert parse("--no-invert", "--count", "2").count == 2
    with pytest.raises(PriorswapError, match="contradict"):
        parse("--invert", "--no-invert")
    with pytest.raises(PriorswapError, match="unknown option"):
        parse("--no-count")


def test_transformers_loading_bars_are_silenced_but_not_the_hubs(tmp_path, capsys, monkeypatch, dit_folder, sd_folder):
    """A fresh cache makes the SD prior load its CLIP text encoder (transformers: a "Loading weights" bar)."""
    from huggingface_hub.utils import are_progress_bars_disabled

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--prior", str(sd_folder), "--class-label",
                           "1", "--steps", "2", "--out", str(tmp_path / "o.png"))
    assert code == 0, err
    assert list((tmp_path / "cache" / "null").iterdir())  # the text encoder did load
    assert "Loading weights" not in err and "it/s" not in err, err
    assert "guidance: prior-swap" in err and "images →" in err  # priorswap's own lines stay
    assert not are_progress_bars_disabled()  # downloads keep their bars


def test_list_says_where_each_definition_comes_from_and_what_it_overrides(capsys, tmp_path, monkeypatch):
    from rich.console import Console

    from priorswap import cli

    monkeypatch.setattr(cli, "console", Console(width=400))
    user = tmp_path / "mine.yaml"
    user.write_text(
        "models:\n"
        "  toy-digits-class:\n"
        "    plugin: toy\n"
        "    roles: [model, prior]\n"
        "    source: {package: priorswap.plugins.toy, path: weights/toy-digits-class}\n"
        "    latent_space: toy-pixels\n"
        "    resolution: 16\n"
    )
    code, out, _ = run_cli(capsys, "list", "--registry", str(user))
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert code == 0 and "defined in" in out
    assert f"{user} (overrides plugin toy)" in rows["toy-digits-class"]
    assert "plugin toy" in rows["toy-digits-base"] and "overrides" not in rows["toy-digits-base"]
    assert "shipped" in rows["dit-xl-2-256"] and "plugin toy" in rows["toy-pixels"]
