"""The embedded toy zoo: data transforms, the shipped classifier, smoke training of every zoo
entry, and the shipped weights loading through the registry and sampling deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import priorswap
import priorswap.plugins.toy as toy_plugin
from priorswap.loading import schedule_fields
from priorswap.plugin_manager import Plugins
from priorswap.plugins.toy import data, models, train
from priorswap.plugins.toy.classifier import CLASSIFIER_ID, accuracy, load_classifier, weights_dir
from priorswap.registry import ScheduleSpec

WEIGHTS = weights_dir()
DIFFUSION = [m for m in train.ZOO if m != CLASSIFIER_ID]
SHIPPED = all((WEIGHTS / m / "training.json").is_file() for m in train.ZOO)
needs_weights = pytest.mark.skipif(
    not SHIPPED, reason=f"the toy zoo weights are not in {WEIGHTS} yet (train them: `priorswap toy train`)"
)


@pytest.fixture
def plugins() -> Plugins:
    """The installed plugins, plus the toy plugin when its entry point is not installed yet."""
    found = Plugins.discover()
    if "toy" not in found.names():
        found.add(toy_plugin, "toy")
    assert not [f for f in found.failures if f.plugin == "toy"], found.failures
    return found


# ---- data ---------------------------------------------------------------------------------------
def test_split_is_deterministic_stratified_and_disjoint():
    x_train, y_train = data.load_digits16("train")
    x_test, y_test = data.load_digits16("test")
    x_all, _ = data.load_digits16("all")
    assert x_train.shape[1:] == (1, 16, 16) and len(x_train) + len(x_test) == len(x_all) == 1797
    assert len(x_test) == 360
    assert x_all.min() >= -1 and x_all.max() <= 1
    assert torch.equal(data.load_digits16("test")[0], x_test)
    assert torch.bincount(y_test).min() >= 35  # stratified: every class ≈ 10 % of the test split
    train_rows = {tuple(r.flatten().tolist()) for r in x_train}
    assert sum(tuple(r.flatten().tolist()) in train_rows for r in x_test) < 5  # (a few exact duplicate digits)


def _center_of_mass(x: torch.Tensor) -> torch.Tensor:
    w = (x + 1).clamp(min=0)[:, 0]
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    total = w.sum(dim=(1, 2))
    return torch.stack([(w * xs).sum(dim=(1, 2)) / total, (w * ys).sum(dim=(1, 2)) / total], dim=1)


def test_rotate_by_zero_is_identity_and_four_quarter_turns_return():
    x, _ = data.load_digits16("test")
    x = x[:16]
    assert torch.allclose(data.rotate(x, 0.0), x, atol=1e-5)
    r = x
    for _ in range(4):
        r = data.rotate(r, 90.0)
    assert torch.allclose(r, x, atol=1e-4)
    assert not torch.allclose(data.rotate(x, 90.0), x, atol=0.1)


def test_rotation_is_counter_clockwise_and_shift_moves_the_center_of_mass():
    dot = -torch.ones(1, 1, 16, 16)
    dot[0, 0, 8, 13] = 1.0  # right of the centre (7.5, 7.5)
    up = data.rotate(dot, 90.0)  # counter-clockwise as displayed: right → top
    assert (up[0, 0] > 0).nonzero().tolist() == [[2, 8]]
    x, _ = data.load_digits16("test")
    moved = _center_of_mass(data.shift(x[:20], 2.0, 0.0)) - _center_of_mass(x[:20])
    assert torch.allclose(moved, torch.tensor([2.0, 0.0]).expand_as(moved), atol=1e-3)


def test_instructions_are_the_documented_transforms():
    x, _ = data.load_digits16("test")
    x = x[:6]
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    out = data.apply_instruction(x, ids)
    assert torch.equal(out[ids == 0], x[ids == 0])
    assert torch.allclose(out[ids == 1], data.shift(x[ids == 1], data.SHIFT_PIXELS, 0.0))
    assert torch.allclose(out[ids == 2], data.rotate(x[ids == 2], data.ROTATE_DEGREES))
    assert data.INSTRUCTIONS == ("keep", "shift", "rotate")
    with pytest.raises(ValueError):
        data.instruction_id("flip")


def test_augment_is_seeded_and_stays_in_range():
    x, _ = data.load_digits16("train")
    a = data.augment(x[:64], torch.Generator().manual_seed(3))
    b = data.augment(x[:64], torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= -1 - 1e-6 and a.max() <= 1 + 1e-6
    assert not torch.equal(a, x[:64])


# ---- classifier -----------------------------------------------------------------------------------
@pytest.mark.skipif(not (WEIGHTS / CLASSIFIER_ID / "model.safetensors").is_file(), reason="classifier not trained yet")
def test_shipped_classifier_is_accurate_on_held_out_digits():
    clf = load_classifier()
    x, y = data.load_digits16("test")
    assert accuracy(clf, x, y) >= 0.95
    assert clf.features(x[:5]).shape == (5, 128)


# ---- training smoke run -----------------------------------------------------------------------
def test_smoke_training_of_every_zoo_entry_loads_through_the_family(tmp_path, plugins):
    scale = 0.001  # a handful of steps each
    stats = train.train_zoo(out_dir=tmp_path, scale=scale, progress=False)
    assert list(stats) == list(train.ZOO)
    for name, s in stats.items():
        assert s["steps"] == max(1, round(train.RECIPES[name].steps * scale))
        assert s["seconds"] >= 0 and s["final_loss"] == s["final_loss"]  # not NaN
    assert load_classifier(tmp_path / CLASSIFIER_ID)(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    for name in DIFFUSION:
        index = json.loads((tmp_path / name / "model_index.json").read_text())
        assert index["_class_name"] == "ToyDigitsPipeline"
        assert any((tmp_path / name).glob("*/diffusion_pytorch_model.safetensors"))
    cases = [
        ("toy-digits-class", "toy-digits-base", {"class_label": [0, 7]}),
        ("toy-digits-class", "toy-digits-dit-v", {"class_label": [3]}),
        ("toy-digits-view", "toy-digits-base", {"source_index": [0, 1], "angle": 20.0}),
        ("toy-digits-edit", "toy-digits-dit-v", {"source_index": [2], "instruction": "rotate"}),
    ]
    for model, prior, inputs in cases:
        pair = priorswap.load_pair(str(tmp_path / model), prior=str(tmp_path / prior), plugins=plugins)
        dual = model == "toy-digits-edit"
        method = "dual-prior-swap" if dual else "prior-swap"
        out = pair.sample(inputs, guidance=method, scale=1.5, image_scale=1.5 if dual else None, steps=2, seed=0)
        n = len(next(v for v in inputs.values() if isinstance(v, list)))
        assert out.images.shape == (n, 3, 16, 16) and torch.isfinite(out.latents).all()
        assert out.forward_calls == {"model": 2, "prior": 2}


def test_training_is_deterministic(tmp_path):
    a = train.train_zoo(only=["toy-digits-base"], out_dir=tmp_path / "a", scale=0.0005, progress=False)
    b = train.train_zoo(only=["toy-digits-base"], out_dir=tmp_path / "b", scale=0.0005, progress=False)
    assert a["toy-digits-base"]["final_loss"] == b["toy-digits-base"]["final_loss"]
    weights = "toy-digits-base/unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()


def test_unknown_zoo_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown zoo id"):
        train.train_zoo(only=["toy-digits-nope"], out_dir=tmp_path)


def test_finetune_is_initialised_from_the_base():
    base = models.base_unet().eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        concat = models.finetune_unet(base, 1).eval()  # zero-initialised extra channels: exactly the base
        out = models.call_unet(concat, x, t, {"image": torch.randn(2, 1, 16, 16)})
        assert torch.allclose(out, models.call_unet(base, x, t, {}), atol=1e-5)
    for kwargs in ({"num_class_embeds": 11}, {"class_embed_type": "timestep"}):
        net = models.finetune_unet(base, 1, **kwargs)
        state = net.state_dict()
        for key, value in base.state_dict().items():
            if key != "conv_in.weight":
                assert torch.equal(state[key], value), key
        assert torch.equal(state["conv_in.weight"][:, :1], base.conv_in.weight)
        assert not state["conv_in.weight"][:, 1:].any()


# ---- the shipped zoo ----------------------------------------------------------------------------
@needs_weights
def test_shipped_weights_fit_the_size_budget():
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert total <= 20 * 2**20
    assert max(p.stat().st_size for p in WEIGHTS.rglob("*.safetensors")) < 8 * 2**20


@needs_weights
def test_registry_entries_match_the_saved_schedulers(plugins):
    registry = priorswap.Registry.load(plugin_files=plugins.registry_files)
    for name in DIFFUSION:
        entry = registry.entry(name)
        assert entry.source.package == "priorswap.plugins.toy" and entry.source.path == f"weights/{name}"
        config = json.loads((WEIGHTS / name / "scheduler" / "scheduler_config.json").read_text())
        assert entry.schedule.key() == ScheduleSpec(**schedule_fields(config)).key()
        assert entry.parameterization == config["prediction_type"]


@needs_weights
@pytest.mark.parametrize(
    ("model", "prior", "inputs"),
    [
        ("toy-digits-class", "toy-digits-base", {"class_label": [0, 1, 2]}),
        ("toy-digits-class", "toy-digits-dit-v", {"class_label": [5]}),
        ("toy-digits-view", "toy-digits-dit-v", {"source_index": [0, 1], "angle": -20.0}),
        ("toy-digits-edit", "toy-digits-base", {"source_index": [3], "instruction": "shift"}),
    ],
)
def test_shipped_models_load_through_the_registry_and_sample_deterministically(plugins, model, prior, inputs):
    pair = priorswap.load_pair(model, prior=prior, plugins=plugins)
    first = pair.sample(inputs, steps=4, seed=1)
    again = pair.sample(inputs, steps=4, seed=1)
    other = pair.sample(inputs, steps=4, seed=2)
    assert torch.equal(first.latents, again.latents)
    assert not torch.equal(first.latents, other.latents)
    assert first.images.min() >= 0 and first.images.max() <= 1 and first.images.shape[1:] == (3, 16, 16)
    assert pair.prior.denoiser.null_condition().keys() <= {"class_labels"}
    cfg = priorswap.load_pair(model, plugins=plugins).sample(inputs, steps=4, seed=1)
    assert torch.isfinite(cfg.latents).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("model", ["toy-digits-view", "toy-digits-class", "toy-digits-edit"])
def test_half_precision_samples_match_float32(plugins, model, dtype):
    """`--dtype fp16/bf16` runs every toy model, the view model's angle embedding included (diffusers feeds its
    sinusoidal features in float32), and stays close to the float32 samples."""
    inputs = {"toy-digits-view": {"source_index": [0, 1], "angle": 10.0}, "toy-digits-class": {"class_label": [3]},
              "toy-digits-edit": {"source_index": [2], "instruction": "shift"}}[model]
    prior = "toy-digits-base" if model == "toy-digits-view" else None
    full = priorswap.load_pair(model, prior=prior, plugins=plugins).sample(inputs, steps=4, seed=0)
    half = priorswap.load_pair(model, prior=prior, plugins=plugins, dtype=dtype).sample(inputs, steps=4, seed=0)
    assert half.record["model"]["dtype"] == str(dtype).removeprefix("torch.")
    assert (half.images.float() - full.images).abs().mean() < 0.05


@needs_weights
def test_null_conditions_are_the_trained_ones(plugins):
    pair = priorswap.load_pair("toy-digits-edit", prior="toy-digits-base", plugins=plugins)
    assert pair.prior.denoiser.null_condition() == {}
    conds = pair.task.conditions(pair.task.Inputs(source_index=[0], instruction="rotate"), pair.model.denoiser)
    assert set(conds) == {"full", "partial", "null"}
    assert conds["partial"]["class_labels"].tolist() == [models.EDIT_NULL]
    assert conds["null"]["class_labels"].tolist() == [models.EDIT_NULL] and not conds["null"]["image"].any()
    class_pair = priorswap.load_pair("toy-digits-class", prior="toy-digits-class", plugins=plugins)
    assert class_pair.model.denoiser.null_condition()["class_labels"].tolist() == [models.CLASS_NULL]
    dit = priorswap.load_pair("toy-digits-class", prior="toy-digits-dit-v", plugins=plugins).prior.denoiser
    assert dit.parameterization == "v_prediction" and dit.null_condition()["class_labels"].tolist() == [1]


# ---- CLI input checks ----------------------------------------------------------------------------
@needs_weights
@pytest.mark.parametrize("model", ["toy-digits-view", "toy-digits-edit"])
def test_a_bad_source_image_is_a_one_line_error(tmp_path, capsys, model):
    from clihelp import run_cli

    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "folder.png").mkdir()
    cases = {"missing.png": "does not exist", "notes.png": "not an image file", "folder.png": "is a folder"}
    for name, problem in cases.items():
        out = tmp_path / "out.png"
        code, _, err = run_cli(capsys, "sample", "--model", model, "--steps", "2", "--image", str(tmp_path / name),
                               "--out", str(out))
        err = " ".join(err.split())  # rich wraps long lines
        assert code == 2 and str(tmp_path / name) in err and problem in err, err
        assert "Traceback" not in err and not out.exists()


def test_demo_checks_its_options_before_any_work(tmp_path, capsys, monkeypatch):
    from clihelp import run_cli

    from priorswap.plugins.toy import demo

    real_run = demo.run
    monkeypatch.setattr(demo, "run", lambda *a, **k: pytest.fail("the demo ran despite a bad option"))
    (tmp_path / "file").write_text("")
    cases = [
        (["--samples", "1"], "--samples"),
        (["--steps", "0"], "--steps"),
        (["--out", str(tmp_path / "file" / "d.png")], str(tmp_path / "file")),
    ]
    if Path("/proc").is_dir():  # writable to root by its mode bits, yet nothing can be created there
        cases.append((["--out", "/proc/d4.png"], "/proc"))
    for args, named in cases:
        args = ["--out", str(tmp_path / "d.png"), *args] if "--out" not in args else args
        code, out, err = run_cli(capsys, "demo", *args)
        err = " ".join(err.split())
        assert code == 2 and named in err and "Traceback" not in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written, no probe left behind
    for kwargs, problem in (({"samples": 1}, "samples must be at least 2"), ({"steps": 0}, "steps must be at least 1")):
        with pytest.raises(priorswap.PriorswapError, match=problem):  # the Python entry point checks them too
            real_run(tmp_path / "d.png", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_training_a_fine_tune_without_its_base_is_refused_before_training(tmp_path, capsys):
    from clihelp import run_cli

    code, _, err = run_cli(capsys, "toy", "train", "--only", "toy-digits-class", "--out", str(tmp_path / "zoo"),
                           "--scale", "0.01")
    message = " ".join(err.split())
    assert code == 2 and "toy-digits-class fine-tune(s) toy-digits-base" in message
    assert "--only toy-digits-base" in message and not (tmp_path / "zoo").exists()


def test_toy_train_sets_the_thread_count_it_is_given(tmp_path, capsys, monkeypatch):
    """`--threads 1` is the setting the shipped weights were trained with (docs/toy-zoo.md): the CLI applies it."""
    import torch
    from clihelp import run_cli

    from priorswap.plugins.toy import train as training

    seen = []
    monkeypatch.setattr(training, "train_zoo", lambda **kwargs: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that 1 is a change on any machine
    try:
        code, _, err = run_cli(capsys, "toy", "train", "--only", "toy-digits-base", "--out", str(tmp_path), "--threads",
                               "1")
    finally:
        torch.set_num_threads(before)
    assert code == 0 and seen == [1], err
