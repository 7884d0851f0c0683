"""The command line refuses what would fail later, early and in its own words: registry roles in `pairs`, option
values that depend on the model checked before any weights load, clashing outputs, and the usage blocks of the
docs list every option."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from clihelp import run_cli

import priorswap

ROOT = Path(__file__).resolve().parent.parent


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---- pairs: registry roles, as sample refuses them ---------------------------------------------------------------
def test_pairs_shows_no_for_a_prior_without_the_prior_role_as_sample_refuses_it(capsys, tmp_path, no_loading):
    code, out, err = run_cli(capsys, "pairs", "toy-digits-view", "--prior", "toy-digits-edit")
    assert code == 0, err
    row = next(line for line in out.splitlines() if "toy-digits-edit" in line)
    assert "│ no" in row and "yes" not in out
    reason = "'toy-digits-edit' cannot be used as a prior (its registry entry lists roles: model)"
    assert reason in one_line(out.replace("│", " "))
    code, _, err = run_cli(capsys, "sample", "--model", "toy-digits-view", "--prior", "toy-digits-edit",
                           "--source-index", "3", "--out", str(tmp_path / "v.png"))
    assert code == 2 and reason in one_line(err)  # the same words, and no weights loaded


def test_pairs_shows_no_for_a_model_without_the_model_role(capsys):
    code, out, err = run_cli(capsys, "pairs", "toy-digits-base", "--prior", "toy-digits-class")
    assert code == 0, err
    assert "│ no" in out and "'toy-digits-base' cannot be used as a model" in one_line(out.replace("│", " "))
    code, out, _ = run_cli(capsys, "pairs", "toy-digits-base")  # against every registry prior: none pairs
    rows = [line for line in out.splitlines() if line.startswith("│ ") and line.split("│")[1].strip()]
    assert code == 0 and rows and all(line.split("│")[2].strip() == "no" for line in rows)
    code, out, _ = run_cli(capsys, "pairs", "toy-digits-class", "--prior", "toy-digits-base")
    assert code == 0 and "│ yes" in out  # both roles fit: the plan decides


def test_load_pair_refuses_a_role_before_loading(no_loading):
    from priorswap.errors import RegistryError

    with pytest.raises(RegistryError, match=r"'toy-digits-view' cannot be used as a prior"):
        priorswap.load_pair("toy-digits-class", prior="toy-digits-view")
    with pytest.raises(RegistryError, match=r"'toy-digits-view' cannot be used as a prior"):
        priorswap.load_pair("toy-digits-view", prior="toy-digits-view")  # itself, too: its entry says model only


# ---- options checked against the model before any weights load -----------------------------------------------------
@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        ("toy-digits-class", ["--seed", "-1"], "--seed must be from 0 to 2**63 − 1 (9223372036854775807), got -1"),
        ("toy-digits-class", ["--seeds", "0,-1"], "--seeds must be from 0 to 2**63 − 1"),
        ("toy-digits-class", ["--seed", str(2**63)], f"--seed must be from 0 to 2**63 − 1 (9223372036854775807), "
                                                      f"got {2**63}"),
        ("toy-digits-class", ["--steps", "5000"],
         "--steps must be from 1 to 1000 (the model's training timesteps), got 5000"),
        ("toy-digits-class", ["--eta", "0.5", "--scheduler", "euler"], "--eta 0.5 needs --scheduler ddim"),
        ("toy-digits-class", ["--image-guidance", "2"],
         "--image-guidance applies to dual guidance only; task 'toy-class' has one condition"),
        ("toy-digits-view", ["--image-guidance", "2"], "task 'toy-view' has one condition"),
        ("toy-digits-class", ["--method", "prior-swap"], "--method prior-swap needs a prior: pass --prior PRIOR"),
        ("toy-digits-class", ["--method", "autoguidance"], "--method autoguidance needs a prior"),
        ("toy-digits-class", ["--method", "dual-cfg"], "--method dual-cfg does not fit task 'toy-class'"),
        ("toy-digits-edit", ["--method", "cfg"], "which has two conditions (dual guidance); use dual-cfg"),
    ],
)
def test_sample_options_are_checked_against_the_model_before_loading(tmp_path, capsys, no_loading, model, args,
                                                                      message):
    task = ["--class-label", "1"] if model == "toy-digits-class" else ["--source-index", "3"]
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "sample", "--model", model, "--out", str(out), *task, *args)
    err = one_line(err)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert "prior=" not in err  # the Python wording stays in the Python API
    assert not out.exists()


def test_eta_with_a_native_scheduler_that_is_not_ddim_names_the_option(tmp_path, capsys):
    """The toy models' native scheduler is DDPM: known only once the scheduler config is read, still in CLI words."""
    code, _, err = run_cli(capsys, "sample", "--model", "toy-digits-class", "--class-label", "1", "--steps", "2",
                           "--scheduler", "native", "--eta", "0.5", "--out", str(tmp_path / "o.png"))
    assert code == 2 and "--eta 0.5 needs --scheduler ddim" in one_line(err) and "DDPMScheduler" in err
    assert not (tmp_path / "o.png").exists()


def test_the_python_api_keeps_its_own_checks():
    pair = priorswap.load_pair("toy-digits-class")
    with pytest.raises(priorswap.PriorswapError, match="prior= in load_pair"):
        pair.sample(class_label=[1], guidance="prior-swap", steps=2)
    with pytest.raises(priorswap.PriorswapError, match="steps must be a whole number from 1 to 1000"):
        pair.sample(class_label=[1], steps=5000)
    with pytest.raises(priorswap.PriorswapError, match="seed must be one whole number"):
        pair.sample(class_label=[1], steps=2, seed=-1)


def view_items(folder: Path) -> Path:
    """Two toy-view items whose `image` is a list of one source digit, with their true rotations as targets."""
    from PIL import Image

    from priorswap.plugins.toy import data

    folder.mkdir(parents=True)
    digits, _ = data.load_digits16("test")

    def save(t: torch.Tensor, name: str) -> None:
        Image.fromarray(((t.clamp(-1, 1) + 1) * 127.5).round().byte().squeeze().numpy(), "L").save(folder / name)

    lines = []
    for i, angle in enumerate((30.0, -30.0)):
        save(digits[i : i + 1], f"src{i}.png")
        save(data.rotate(digits[i : i + 1], torch.tensor([angle])), f"tgt{i}.png")
        lines.append(json.dumps({"id": f"d{i}", "image": [f"src{i}.png"], "angle": angle, "target": f"tgt{i}.png"}))
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image-guidance", "2"], "--image-guidance applies to dual guidance only; task 'toy-view' has one"),
        (["--steps", "5000"], "--steps must be from 1 to 1000 (the model's training timesteps), got 5000"),
        (["--seeds", "0,-1"], "--seeds must be from 0 to 2**63 − 1"),
    ],
)
def test_eval_options_are_checked_against_the_model_before_loading(tmp_path, capsys, monkeypatch, args, message):
    from priorswap import api

    def never(*a, **k):
        pytest.fail("weights loaded before the options were checked")

    monkeypatch.setattr(api, "load_pair", never)
    data, out = view_items(tmp_path / "views"), tmp_path / "eval"
    for extra in (["--data", str(data)], []):  # with a dataset, and with the toy plugin's built-in evaluator
        code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-view", "--out", str(out), *extra, *args)
        assert code == 2 and message in one_line(err), (extra, err)
        assert not out.exists()


def test_the_dataset_runner_refuses_an_image_scale_for_one_condition(tmp_path):
    from priorswap.dataset_eval import EvalRequest, run

    request = EvalRequest(model="toy-digits-view", data=view_items(tmp_path / "views"), image_guidance=2.0)
    with pytest.raises(priorswap.PriorswapError, match="--image-guidance applies to dual guidance only"):
        run(request)


# ---- outputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("out", "out_dir", "message"),
    [
        ("od/seed0-00.png", "od", "--out {tmp}/od/seed0-00.png is one of the files --out-dir {tmp}/od writes"),
        ("od/seed5-01.png", "od", "is one of the files --out-dir"),
        ("g.png", "g.png", "--out {tmp}/g.png and --out-dir {tmp}/g.png are the same path"),
    ],
)
def test_out_may_not_be_a_file_out_dir_writes(tmp_path, capsys, no_loading, out, out_dir, message):
    args = ["--out", str(tmp_path / out), "--out-dir", str(tmp_path / out_dir), "--seeds", "0,5", "--class-label", "1"]
    code, _, err = run_cli(capsys, "sample", "--model", "toy-digits-class", *args)
    assert code == 2 and message.replace("{tmp}", str(tmp_path)) in one_line(err), err
    assert list(tmp_path.iterdir()) == []


def test_out_and_out_dir_that_do_not_clash_both_write(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", "--model", "toy-digits-class", "--class-label", "1", "--steps", "2",
                           "--seed", "3", "--out", str(tmp_path / "od" / "seed0-00.png"), "--out-dir",
                           str(tmp_path / "od"))
    assert code == 0, err  # seed0-00.png is not a file of this run (its seed is 3)
    assert sorted(p.name for p in (tmp_path / "od").iterdir()) == ["seed0-00.png", "seed3-00.png"]


@pytest.mark.parametrize(("option", "name", "suffix"), [("--out", "foo.jpg", ".png"),
                                                        ("--save-latents", "z.pt", ".safetensors")])
def test_a_wrong_suffix_names_the_option(tmp_path, capsys, no_loading, option, name, suffix):
    code, _, err = run_cli(capsys, "sample", "--model", "toy-digits-class", "--class-label", "1", option,
                           str(tmp_path / name))
    assert code == 2 and f"{option} {tmp_path / name} should end in {suffix}" in one_line(err)


def test_a_failed_write_names_the_destination_not_the_temporary_file(tmp_path, capsys):
    (tmp_path / "od" / "seed0-00.png").mkdir(parents=True)  # a folder where the image goes
    code, _, err = run_cli(capsys, "sample", "--model", "toy-digits-class", "--class-label", "1", "--steps", "2",
                           "--out-dir", str(tmp_path / "od"))
    err = one_line(err)
    assert code == 2 and f"could not write {tmp_path / 'od' / 'seed0-00.png'}: Is a directory" in err, err
    assert ".seed0-00.png." not in err and "Traceback" not in err


def test_a_failed_eval_write_exits_2_and_leaves_no_results(tmp_path, capsys):
    data, out = view_items(tmp_path / "views"), tmp_path / "eval"
    (out / "samples.png").mkdir(parents=True)
    code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-view", "--data", str(data), "--steps", "2",
                           "--out", str(out))
    err = one_line(err)
    assert code == 2 and f"could not write {out / 'samples.png'}: Is a directory" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["samples.png"]  # results.json and results.md removed


def test_the_samples_grid_shows_the_first_image_of_a_list_input(tmp_path, capsys):
    from PIL import Image

    data, out = view_items(tmp_path / "views"), tmp_path / "eval"
    code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-view", "--data", str(data), "--steps", "2",
                           "--out", str(out))
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["grid_columns"] == ["input", "target", "cfg γ=1.5"]
    grid = np.asarray(Image.open(out / "samples.png").convert("L"), dtype=np.int16)
    top, left, scale = (results["grid_layout"][k] for k in ("top", "left", "scale"))  # below labels, scaled up
    assert scale == 4 and grid.shape == (top + 2 + 2 * 66, left + 2 + 3 * 66)  # 2 items × 3 columns, 2 px apart
    for row in range(2):
        source = np.asarray(Image.open(data / f"src{row}.png"), dtype=np.int16)
        y = top + 2 + row * 66
        assert np.abs(grid[y : y + 64 : 4, left + 2 : left + 66 : 4] - source).max() <= 1


# ---- help and docs -----------------------------------------------------------------------------------------------
def test_help_shows_the_checkpoint_variant_syntax(capsys):
    code, out, _ = run_cli(capsys, "sample", "--help")
    assert code == 0 and "FILE#variant" in out  # not eaten as rich markup


def _usage(page: str, command: str) -> str:
    """The usage block of `priorswap COMMAND` on a page: the ``` block that starts with it."""
    blocks = re.findall(r"```\n(priorswap " + command + r" --model MODEL.*?)```", (ROOT / page).read_text(), re.S)
    assert len(blocks) == 1, (page, command, blocks)
    return blocks[0]


@pytest.mark.parametrize(("page", "command", "left_out"), [
    ("docs/cli.md", "sample", set()),
    ("docs/cli.md", "eval", set()),
    ("docs/eval.md", "eval", {"--samples"}),  # the --data page: --samples is for built-in evaluators only
])
def test_usage_blocks_list_every_option(page, command, left_out):
    import typer

    from priorswap.cli import app

    params = typer.main.get_command(app).commands[command].params
    options = {o for p in params for o in p.opts if o.startswith("--") and o != "--help"}
    shown = set(re.findall(r"--[a-z][a-z-]*", _usage(page, command)))
    assert options - left_out - shown == set(), f"{page}: the `{command}` usage block lacks these"
    assert shown - options == set(), f"{page}: the `{command}` usage block names options that do not exist"
