"""The evaluation harness and the demo on the shipped toy zoo (small runs)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clihelp import run_cli

from priorswap.plugins.toy.evaluate import Reference, Variant, evaluate, markdown


@pytest.fixture(scope="module")
def reference():
    return Reference()


def test_adapters_beat_naive_timestep_reuse_for_the_cross_architecture_prior(reference):
    """DiT-v (cosine schedule, v-prediction) as the prior of the ε/linear class model: with σ-matching
    and v→x̂0 conversion the samples stay digits; fed the raw timestep and read as ε they do not."""
    torch.set_num_threads(2)
    records = evaluate(
        "toy-digits-class", [Variant("toy-digits-dit-v"), Variant("toy-digits-dit-v", adapters=False)], [2.0],
        samples=60, seeds=(0,), steps=10, n_boot=60, reference=reference,
    )
    fd = {r.method: r for r in records if r.metric == "fd"}
    adapted, naive = fd["swap:toy-digits-dit-v"], fd["swap:toy-digits-dit-v (no adapters)"]
    assert adapted.ci_high < naive.ci_low, markdown(records)
    assert naive.value > 3 * adapted.value


def test_eval_cli_writes_json_markdown_and_plot(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "eval", "--model", "toy-digits-view", "--prior", "none,toy-digits-base", "--guidance", "1.5,3",
        "--samples", "10", "--seeds", "0", "--steps", "4", "--out", str(tmp_path),
    )
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    records = results.pop("records")
    # the run's settings: a results.json describes itself
    assert {k: results[k] for k in ("model", "task", "priors", "methods", "rules", "guidance", "image_guidance",
                                    "samples", "samples_per_seed", "seeds", "steps", "scheduler", "eta")} == {
        "model": "toy-digits-view", "task": "toy-view", "priors": ["none", "toy-digits-base"],
        "methods": ["cfg", "swap:toy-digits-base"], "rules": ["cfg", "prior-swap"], "guidance": [1.5, 3.0],
        "image_guidance": None, "samples": 10, "samples_per_seed": 10, "seeds": [0], "steps": 4,
        "scheduler": "ddim", "eta": 0.0}
    assert results["bootstrap_resamples"] > 0 and results["torch"] == torch.__version__
    assert results["dtype"] == "float32" and results["device"] == "cpu"
    keys = {"model", "prior", "method", "guidance", "metric", "value", "ci_low", "ci_high"}
    assert records and all(set(r) == keys for r in records)
    assert {r["metric"] for r in records} == {"fd", "psnr", "ssim", "accuracy"}
    assert {(r["method"], r["guidance"]) for r in records} == {
        (m, g) for m in ("cfg", "swap:toy-digits-base") for g in (1.5, 3.0)
    }
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] or np.isinf(r["value"]) for r in records)
    assert (tmp_path / "results.png").stat().st_size > 1000 and "| method |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "bf16"], "--dtype bf16: the toy plugin's built-in evaluator"),
        (["--dtype", "fp16", "--registry", "extra.yaml"], "--dtype fp16, --registry extra.yaml: the toy plugin's"),
        (["--device", "cuda:0"], "--device cuda:0: the toy plugin's built-in evaluator (eval without --data) samples "
                                 "the shipped toy models in float32 on the CPU"),
    ],
)
def test_the_builtin_evaluator_refuses_loading_options_it_cannot_honour(tmp_path, capsys, monkeypatch, args,
                                                                        message):
    from priorswap import checks
    from priorswap.plugins.toy import evaluate as toy_evaluate

    monkeypatch.setattr(toy_evaluate, "evaluate", lambda *a, **k: pytest.fail("sampled despite the option"))
    monkeypatch.setattr(checks, "device", lambda name, *a, **k: name)  # as if this machine had a GPU
    monkeypatch.chdir(tmp_path)
    (tmp_path / "extra.yaml").write_text("models: {}\n")
    code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-view", "--steps", "2", "--samples", "3", *args)
    assert code == 2 and message in " ".join(err.split()), err
    assert "--data DIR" in err


def test_run_settings_of_a_dual_task_and_uneven_sample_counts():
    """The edit task draws samples // 3 per instruction: the settings say how many were drawn, and the image
    scale dual guidance used (the registry's when none is given)."""
    import priorswap
    from priorswap.plugins.toy.evaluate import run_settings

    entry = priorswap.Registry.load([], priorswap.get_plugins().registry_files).entry("toy-digits-edit")
    settings = run_settings("toy-digits-edit", [Variant(None), Variant("toy-digits-base", adapters=False)], [2.0],
                            samples=10, seeds=(0, 1), steps=3)
    assert settings["samples_per_seed"] == 9 and settings["rules"] == ["dual-cfg", "dual-prior-swap"]
    assert settings["image_guidance"] == (entry.recommended.image_guidance or 1.0)
    assert settings["methods"] == ["cfg", "swap:toy-digits-base (no adapters)"]
    assert run_settings("toy-digits-edit", [Variant(None)], [2.0], 10, (0,), 3, image_guidance=1.25)[
        "image_guidance"] == 1.25


def test_edit_task_uses_dual_guidance(reference):
    records = evaluate("toy-digits-edit", [Variant(None), Variant("toy-digits-base")], [2.0], samples=9,
                       seeds=(0,), steps=3, n_boot=20, reference=reference)
    assert {r.method for r in records} == {"cfg", "swap:toy-digits-base"}
    assert {r.metric for r in records} == {"fd", "psnr", "ssim", "accuracy"}


def test_demo_reduced_mode(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "demo.png"
    code, stdout, err = run_cli(capsys, "demo", "--out", str(out), "--samples", "12", "--steps", "3")
    assert code == 0, err
    from PIL import Image

    with Image.open(out) as img:
        assert img.width > 600 and img.height > 150
    assert "toy-digits-class" in stdout and "swap: DiT-v" in stdout and "accuracy" in stdout
    # each table says what it measured: the view model draws a whole number per angle (12 → 2 × 5 angles)
    assert "12 samples per method" in stdout and "10 samples per method" in stdout, stdout
    assert "…" not in stdout, stdout  # at 80 columns a cell wraps, no interval is cut off


def test_demo_refuses_a_non_png(tmp_path, capsys):
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path / "demo.jpg"))
    assert code == 2 and ".png" in err and not list(tmp_path.iterdir())


def test_zoo_page_table_is_rewritten_between_its_markers(tmp_path):
    from priorswap.plugins.toy.evaluate import Record
    from priorswap.plugins.toy.results import MEASURED_END, MEASURED_START, update_zoo_page

    page = tmp_path / "toy-zoo.md"
    page.write_text(f"# Zoo\n\nintro\n\n{MEASURED_START}\nold numbers\n{MEASURED_END}\n\nafter\n")
    uncond = [
        Record("real-train-digits", "none", "data", 0.0, "fd", 0.5, 0.4, 0.6),
        Record("toy-digits-base", "none", "unconditional", 0.0, "fd", 2.25, 2.0, 2.5),
    ]
    update_zoo_page(page, uncond, "a test")
    text = page.read_text()
    assert "old numbers" not in text and text.startswith("# Zoo") and text.endswith("after\n")
    row = next(line for line in text.splitlines() if line.startswith("| `toy-digits-base`"))
    assert "6,000" in row and "2.25 [2, 2.5]" in row  # steps from the shipped training.json, FD from the record
    assert "held-out accuracy 0.99" in text
    page.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        update_zoo_page(page, uncond, "a test")


def test_results_page_renders_from_saved_numbers_with_verdict_counts(tmp_path):
    from dataclasses import asdict

    from priorswap.plugins.toy.evaluate import Record
    from priorswap.plugins.toy.results import HEADLINE, TASK_MODELS, render_page

    records = []
    for model in TASK_MODELS:
        for metric in HEADLINE[model]:
            for gamma in (1.5, 3.0):
                records.append(Record(model, "none", "cfg", gamma, metric, 10.0, 9.0, 11.0))
                # the base swap is clearly higher (better except for FD), the no-adapter one overlaps CFG
                records.append(Record(model, "toy-digits-base", "swap:toy-digits-base", gamma, metric, 20, 19, 21))
                records.append(Record(model, "toy-digits-dit-v", "swap:toy-digits-dit-v (no adapters)", gamma,
                                      metric, 10.5, 9.5, 11.5))
    records.append(Record("toy-digits-base", "none", "unconditional", 0.0, "fd", 2.0, 1.5, 2.5))
    (tmp_path / "results-toy").mkdir()
    (tmp_path / "results-toy" / "results.json").write_text(json.dumps([asdict(r) for r in records]))
    (tmp_path / "results-toy" / "run.json").write_text(json.dumps(
        {"samples": 7, "seeds": [0, 1, 2], "steps": 5, "machine": "test", "minutes": 1.0}))
    render_page(tmp_path / "results-toy.md")
    page = (tmp_path / "results-toy.md").read_text()
    assert "`priorswap toy results --samples 7 --seeds 0,1,2 --steps 5`" in page
    # class: FD higher = worse (2), accuracy higher = better (2); view/edit: PSNR and SSIM better (4 each)
    assert "| toy-digits-class | swap:toy-digits-base | 2 | 0 | 2 |" in page
    assert "| toy-digits-view | swap:toy-digits-base | 4 | 0 | 0 |" in page
    assert "| toy-digits-edit | swap:toy-digits-dit-v (no adapters) | 0 | 4 | 0 |" in page
    assert "At least one swap beat CFG" in page and "worse than CFG in 0 of 12" in page
    assert (tmp_path / "results-toy" / "toy-digits-view.png").stat().st_size > 1000
    # one seed is "1 seed"; without a toy-zoo.md beside the page the skipped table is named
    (tmp_path / "results-toy" / "run.json").write_text(json.dumps(
        {"samples": 7, "seeds": [0], "steps": 5, "machine": "test", "minutes": 1.0}))
    render_page(tmp_path / "results-toy.md")
    assert "1 seed × 7 samples per method" in (tmp_path / "results-toy.md").read_text()


def test_toy_results_outside_the_repository_stops_before_measuring(tmp_path, capsys, monkeypatch):
    """Run elsewhere, the default --out docs/results-toy.md has no folder: exit 2 at once, nothing created (it
    wrote a stray docs/ there before, and skipped the zoo table without a word)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "toy", "results", "--samples", "2", "--seeds", "0", "--steps", "1")
    assert code == 2 and "no folder docs; run from the repository root" in err, err
    assert list(tmp_path.iterdir()) == []


def test_toy_results_says_when_the_zoo_table_is_not_beside_the_page(tmp_path, capsys):
    import shutil

    docs = Path(__file__).resolve().parent.parent / "docs"
    (tmp_path / "results-toy").mkdir()
    for name in ("results.json", "run.json"):
        shutil.copy(docs / "results-toy" / name, tmp_path / "results-toy" / name)
    code, _, err = run_cli(capsys, "toy", "results", "--out", str(tmp_path / "page.md"), "--render-only")
    assert code == 0 and "toy-zoo.md beside the page" in " ".join(err.split()), err


def _view_dataset(folder, shuffle_targets: bool):
    """Four held-out digits with their true rotations as targets (or, shuffled, another item's rotation)."""
    from PIL import Image

    from priorswap.plugins.toy import data

    folder.mkdir()
    digits, _ = data.load_digits16("test")
    angles = [30.0, -30.0, 20.0, -20.0]

    def save(t, name):
        Image.fromarray(((t.clamp(-1, 1) + 1) * 127.5).round().byte().squeeze().numpy(), "L").save(folder / name)

    lines = []
    for i, angle in enumerate(angles):
        save(digits[i : i + 1], f"src{i}.png")
        save(data.rotate(digits[i : i + 1], torch.tensor([angle])), f"tgt{i}.png")
    for i, angle in enumerate(angles):
        target = f"tgt{(i + 1) % 4 if shuffle_targets else i}.png"
        lines.append(json.dumps({"id": f"d{i}", "image": [f"src{i}.png"], "angle": angle, "target": target}))
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_eval_data_on_the_toy_view_model_measures_against_each_items_target(tmp_path, capsys):
    psnr = {}
    for shuffled in (False, True):
        folder = _view_dataset(tmp_path / f"data-{shuffled}", shuffled)
        out = tmp_path / f"out-{shuffled}"
        code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-view", "--prior", "none,toy-digits-base",
                               "--data", str(folder), "--steps", "6", "--guidance", "2", "--out", str(out))
        assert code == 0, err
        results = json.loads((out / "results.json").read_text())
        assert results["metrics"] == ["psnr", "ssim"] and results["item_ids"] == ["d0", "d1", "d2", "d3"]
        by_method = {r["method"]: r["metrics"] for r in results["records"]}
        assert set(by_method) == {"cfg", "swap:toy-digits-base"}
        psnr[shuffled] = {m: v["psnr"]["value"] for m, v in by_method.items()}
        assert (out / "samples.png").is_file() and "| psnr ↑ | ssim ↑ |" in (out / "results.md").read_text()
    # the samples resemble their own item's rotated digit, not another item's
    assert all(psnr[False][m] > psnr[True][m] + 5 for m in psnr[False]), psnr
