"""The command line: lazy imports, sampling outputs, and clear errors with exit code 2."""

import subprocess
import sys

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
    ],
)
def test_bad_input_exits_2_without_output(tmp_path, capsys, dit_folder, args, message):
    png = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--out", str(png), *args)
    assert code == 2
    assert message in " ".join(err.split())
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_suggests(capsys):
    code, _, err = run_cli(capsys, "sample", "--model", "dit-xl2-256", "--class-label", "1")
    assert code == 2 and "dit-xl-2-256" in err


def test_wrong_suffix_is_refused(tmp_path, capsys, dit_folder):
    code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--out", str(tmp_path / "a.jpg"))
    assert code == 2 and ".png" in err


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
