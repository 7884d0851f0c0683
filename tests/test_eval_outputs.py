"""`priorswap eval --data`: what its outputs say (subset metrics, the header, the run's settings, the labelled
samples.png with its provenance record), how they are written (all or nothing, never destroying a previous
run's results), and the dataset messages of review items 4, 5 and 20."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from clihelp import run_cli
from PIL import Image

import priorswap
from priorswap.datasets import DatasetError, load_items
from priorswap.errors import PriorswapError
from priorswap.plugins.toy.tasks import ToyViewTask
from priorswap.provenance import read_record


def one_line(text: str) -> str:
    return " ".join(text.split())


def toy_items(folder: Path, targets: tuple[bool, ...] = (True, True)) -> Path:
    """Toy-view items d0, d1, ... (one held-out source digit each), with their true rotation as `target` where
    `targets` says so."""
    from priorswap.plugins.toy import data

    folder.mkdir(parents=True, exist_ok=True)
    digits, _ = data.load_digits16("test")

    def save(t: torch.Tensor, name: str) -> None:
        Image.fromarray(((t.clamp(-1, 1) + 1) * 127.5).round().byte().squeeze().numpy(), "L").save(folder / name)

    lines = []
    for i, with_target in enumerate(targets):
        angle = 20.0 if i % 2 else -20.0
        save(digits[i : i + 1], f"src{i}.png")
        line = {"id": f"d{i}", "image": [f"src{i}.png"], "angle": angle}
        if with_target:
            save(data.rotate(digits[i : i + 1], torch.tensor([angle])), f"tgt{i}.png")
            line["target"] = f"tgt{i}.png"
        lines.append(json.dumps(line))
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def never_load(monkeypatch):
    from priorswap import api

    def never(*args, **kwargs):
        pytest.fail("weights were loaded")

    monkeypatch.setattr(api, "load_pair", never)


# ---- the dataset's messages (items 4, 5, 20) ------------------------------------------------------------------


def test_a_non_utf8_line_names_the_file_and_line_and_a_bom_is_accepted(tmp_path):
    folder = toy_items(tmp_path / "d")
    good = (folder / "items.jsonl").read_bytes().splitlines()[0]
    (folder / "items.jsonl").write_bytes(good + b"\n" + '{"id": "café", "image": ["src1.png"]}\n'.encode("latin-1"))
    with pytest.raises(DatasetError) as info:
        load_items(folder, ToyViewTask)
    message = str(info.value)
    assert "items.jsonl: line 2: not UTF-8 (byte 0xe9" in message and "save items.jsonl as UTF-8" in message
    assert "line 1" not in message
    (folder / "items.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\n" + '{"id": "café", "image": ["src1.png"]}\n'
                                         .encode())
    assert [i.id for i in load_items(folder, ToyViewTask)] == ["d0", "café"]


def test_json_errors_point_into_their_own_line(tmp_path):
    folder = toy_items(tmp_path / "d")
    line = (folder / "items.jsonl").read_text().splitlines()[0]
    (folder / "items.jsonl").write_text(line[:-1] + "\n" + line.replace("d0", "d1") + "\n")  # no closing }
    expected = rf"line 1: not valid JSON \(Expecting ',' delimiter at column {len(line)}\)"  # not line 2's column 1
    with pytest.raises(DatasetError, match=expected):
        load_items(folder, ToyViewTask)


def test_a_target_or_image_that_is_a_folder_says_so(tmp_path):
    folder = toy_items(tmp_path / "d")
    (folder / "adir").mkdir()
    (folder / "items.jsonl").write_text(json.dumps({"image": ["adir"], "angle": 5, "target": "adir"}) + "\n")
    with pytest.raises(DatasetError) as info:
        load_items(folder, ToyViewTask)
    message = str(info.value)
    assert "field 'target': " in message and "field 'image': " in message
    assert message.count("adir is a folder, not a file") == 2 and "does not exist" not in message


def test_data_naming_a_file_says_to_give_the_folder(tmp_path):
    folder = toy_items(tmp_path / "d")
    with pytest.raises(DatasetError, match=rf"--data {folder / 'items.jsonl'} is a file, not a dataset folder; give "
                                           rf"its folder, --data {folder} "):
        load_items(folder / "items.jsonl", ToyViewTask)
    with pytest.raises(DatasetError, match=r"src0.png is a file, not a dataset folder; give the folder that holds"):
        load_items(folder / "src0.png", ToyViewTask)


def test_a_huge_image_in_an_item_names_line_field_and_pixels(tmp_path, monkeypatch):
    folder = toy_items(tmp_path / "d")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 16×16 files now count as bombs
    with pytest.raises(DatasetError) as info:
        load_items(folder, ToyViewTask, limit=1)
    message = str(info.value)
    assert "line 1, field 'target': " in message and "tgt0.png is too large (256 pixels" in message
    assert "line 1, field 'image': " in message and "src0.png is too large" in message


@pytest.mark.parametrize(
    ("args", "message", "absent"),
    [
        (["--metrics", "psnr,psnr"], "--metrics repeats psnr: give each value once", None),
        (["--metrics", "lpips"], "--metrics lpips: lpips not measured; task 'toy-view' measures psnr, ssim",
         "clip-image-target"),
    ],
)
def test_metric_option_messages(tmp_path, capsys, never_load, args, message, absent):
    data = toy_items(tmp_path / "d")
    code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-view", "--data", str(data), *args)
    assert code == 2 and message in one_line(err), err
    assert absent is None or absent not in err


# ---- writing: all or nothing, never destroying a previous run (item 7) -----------------------------------------


def test_an_out_file_name_taken_by_a_folder_is_refused_before_sampling(tmp_path, capsys, never_load):
    data, out = toy_items(tmp_path / "d"), tmp_path / "out"
    (out / "results.md").mkdir(parents=True)
    (out / "results.json").write_text('{"old": "precious"}')
    code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-view", "--data", str(data), "--out", str(out))
    assert code == 2 and f"could not write {out / 'results.md'}: Is a directory" in one_line(err)
    assert "nothing was sampled" in one_line(err)
    assert (out / "results.json").read_text() == '{"old": "precious"}'


def _previous(folder: Path) -> None:
    folder.mkdir()
    for name in ("results.json", "results.md", "samples.png"):
        (folder / name).write_text(f"old {name}")


def _left(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_a_failed_write_keeps_the_previous_files_and_leaves_no_temporary_ones(tmp_path):
    from priorswap.media import write_together

    _previous(tmp_path / "out")

    def disk_full(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device", tmp)

    files = [(tmp_path / "out" / "results.json", lambda tmp: Path(tmp).write_text("new json")),
             (tmp_path / "out" / "results.md", lambda tmp: Path(tmp).write_text("new md")),
             (tmp_path / "out" / "samples.png", disk_full)]
    with pytest.raises(PriorswapError, match=r"could not write .*out/samples.png: No space left on device; none of "
                                             r"this run's files were written, and the files that were there are kept"):
        write_together(files)
    assert _left(tmp_path / "out") == {n: f"old {n}" for n in ("results.json", "results.md", "samples.png")}


def test_a_failed_rename_puts_the_previous_files_back(tmp_path, monkeypatch):
    from priorswap.media import write_together

    _previous(tmp_path / "out")
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "samples.png" and not str(src).endswith(".previous"):  # the new file, not the restore
            raise OSError(13, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    files = [(tmp_path / "out" / n, lambda tmp, n=n: Path(tmp).write_text(f"new {n}"))
             for n in ("results.json", "results.md", "samples.png")]
    with pytest.raises(PriorswapError, match="samples.png: Permission denied"):
        write_together(files)
    assert _left(tmp_path / "out") == {n: f"old {n}" for n in ("results.json", "results.md", "samples.png")}


def test_writing_into_a_new_folder_removes_it_again_on_failure(tmp_path):
    from priorswap.media import write_together

    def fail(tmp: str) -> None:
        raise OSError(28, "No space left on device", tmp)

    with pytest.raises(PriorswapError):
        write_together([(tmp_path / "a" / "b" / "x.json", fail)])
    assert list(tmp_path.iterdir()) == []
    write_together([(tmp_path / "a" / "x.json", lambda tmp: Path(tmp).write_text("ok"))])
    assert (tmp_path / "a" / "x.json").read_text() == "ok" and oct((tmp_path / "a" / "x.json").stat().st_mode)[-3:] \
        != "600"


# ---- what the outputs say (items 6, 12, 13, 14) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> tuple[Path, Path, dict, str, str]:
    """One bf16 run on 3 items, only the first with a target, 2 seeds × 2 samples, over a previous run's files."""
    import pytest as _pytest

    root = tmp_path_factory.mktemp("mixed")
    data, out = toy_items(root / "data", (True, False, False)), root / "out"
    _previous(out)
    capsys = _Capture()
    with _pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        code, stdout, err = capsys.run("eval", "--model", "toy-digits-view", "--prior", "none,toy-digits-base",
                                       "--data", str(data), "--steps", "2", "--guidance", "2", "--seeds", "0,1",
                                       "--samples-per-item", "2", "--dtype", "bf16", "--out", str(out))
    assert code == 0, err
    return data, out, json.loads((out / "results.json").read_text()), stdout, err


class _Capture:
    """run_cli for a module-scoped fixture (no capsys there): captures stdout and stderr itself."""

    def run(self, *args: str) -> tuple[int, str, str]:
        import contextlib
        import io
        import sys

        from priorswap import cli

        out, err = io.StringIO(), io.StringIO()  # the CLI's rich consoles write to the current sys.stdout/stderr
        old = sys.argv
        sys.argv = ["priorswap", *args]
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    cli.main()
                    code = 0
                except SystemExit as e:
                    code = int(e.code or 0)
        finally:
            sys.argv = old
        return code, out.getvalue(), err.getvalue()


def test_a_metric_on_a_subset_of_the_items_says_so(mixed_run):
    _, out, results, stdout, err = mixed_run
    assert results["unmeasured_items"] == {"psnr": ["d1", "d2"], "ssim": ["d1", "d2"]}
    warning = "psnr, ssim measured on 1 of 3 items; the items without a `target`: d1, d2"
    assert warning in one_line(err) and results["coverage"] == [warning]
    page = (out / "results.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| cfg |") or line.startswith("| swap:")]
    assert len(rows) == 2 and all(row.count("(1 of 3 items)") == 2 for row in rows)
    assert warning in page and "(1 of 3 items)" in stdout


def test_the_header_separates_seeds_from_samples(mixed_run):
    page = (mixed_run[1] / "results.md").read_text()
    assert ("Task `toy-view`: 3 items; seeds 0, 1; 2 samples per item and seed; 2 steps (ddim, η=0; bfloat16 on "
            "cpu). 95 % bootstrap intervals over items (500 resamples).") in page


def test_results_json_records_how_the_run_was_made(mixed_run):
    data, _, results, _, _ = mixed_run
    assert {k: results[k] for k in ("data", "dtype", "device", "scheduler", "eta", "steps", "priorswap", "torch",
                                    "bootstrap_resamples", "bootstrap_resamples_set")} == {
        "data": str(data.resolve()), "dtype": "bfloat16", "device": "cpu", "scheduler": "ddim", "eta": 0.0,
        "steps": 2, "priorswap": priorswap.__version__, "torch": torch.__version__, "bootstrap_resamples": 500,
        "bootstrap_resamples_set": 200}
    psnr = results["records"][0]["metrics"]["psnr"]
    assert psnr["items"] == 1 and psnr["n"] == 2 * 2  # seeds × samples of the one item with a target
    assert results["resolution"] == 16  # the toy's native size


def test_each_record_lists_the_adapters_its_pair_inserted(tmp_path, capsys):
    data = toy_items(tmp_path / "data", (True,))
    code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-view", "--data", str(data), "--steps", "1",
                           "--prior", "none,toy-digits-base,toy-digits-dit-v", "--ablate-adapters",
                           "--out", str(tmp_path / "out"))
    assert code == 0, err
    records = json.loads((tmp_path / "out" / "results.json").read_text())["records"]
    assert {r["method"]: r["inserted"] for r in records} == {
        "cfg": [], "swap:toy-digits-base": [],  # the same schedule and parameterization: nothing to insert
        "swap:toy-digits-dit-v": ["σ-matching (continuous): model's linear(0.0001–0.02)/1000 → prior's cosine/1000",
                                  "parameterization: prior's v_prediction → x̂0 → model's epsilon"],
        "swap:toy-digits-base (no adapters)": [], "swap:toy-digits-dit-v (no adapters)": []}  # the ablation


def test_the_previous_run_was_replaced_as_a_whole(mixed_run):
    out = mixed_run[1]
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "samples.png"]  # no temporaries
    assert (out / "results.md").read_text().startswith("## toy-digits-view")


def test_samples_png_has_labels_and_a_provenance_record(mixed_run, capsys):
    _, out, results, _, _ = mixed_run
    record = read_record(out / "samples.png")
    assert record["eval"]["rows"] == ["d0", "d1", "d2"] and record["eval"]["data"] == results["data"]
    assert record["eval"]["columns"] == results["grid_columns"] == [
        "input", "target", "cfg γ=2", "swap:toy-digits-base γ=2"]
    assert record["columns"]["cfg γ=2"]["prior"] is None
    assert record["columns"]["swap:toy-digits-base γ=2"]["prior"]["id"] == "toy-digits-base"
    assert record["columns"]["swap:toy-digits-base γ=2"]["guidance"]["method"] == "prior-swap"
    assert record["model"]["dtype"] == "bfloat16" and record["seed"] == 0 and "--dtype bf16" in record["command"]
    assert set(record["input_sha256"]) == {"d0", "d1", "d2"}
    code, stdout, _ = run_cli(capsys, "info", str(out / "samples.png"))
    assert code == 0 and "swap:toy-digits-base γ=2" in stdout and "prior-swap: x̂0 = 2·model(full) − 1·prior(null)" \
        in one_line(stdout)
    # the layout: 16-px outputs scaled up to 64, below a header of labels, right of the item ids
    layout = results["grid_layout"]
    top, left, (h, w), pad = layout["top"], layout["left"], layout["cell"], layout["pad"]
    grid = np.asarray(Image.open(out / "samples.png").convert("L"))
    assert (h, w, layout["scale"]) == (64, 64, 4)
    assert grid.shape == (top + pad + 3 * (h + pad), left + pad + 4 * (w + pad))
    assert (grid[:top, left:] < 128).sum() > 50  # dark text on white above the cells: the column labels
    assert (grid[top:, :left] < 128).sum() > 20  # the item ids
    missing = grid[top + pad + (h + pad) : top + pad + (h + pad) + h, left + pad + (w + pad) :][:, :w]  # d1's target
    assert missing.min() < 200 and (missing == 255).mean() > 0.8  # crossed out, not a blank white image
