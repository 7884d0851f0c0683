"""`priorswap eval --data DIR`: the dataset format and its errors, the image metrics, the runner on tiny
Zero-1-to-3, Versatile Diffusion and InstructPix2Pix models with a tiny CLIP, and the dispatch of `eval`
without --data to a plugin's evaluator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from clihelp import run_cli
from PIL import Image
from test_instruct_pix2pix import make_ip2p_folder
from test_versatile_diffusion import make_vd_folder
from test_zero123 import make_zero123_folder
from tiny import write_metric_weights

import priorswap
from priorswap import image_metrics as M
from priorswap.datasets import DatasetError, load_items
from priorswap.images import load_image
from priorswap.provenance import read_record


def write_png(path: Path, seed: int, size: tuple[int, int] = (16, 16)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_items(folder: Path, items: list[dict | str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [i if isinstance(i, str) else json.dumps(i) for i in items]
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def make_char_tokenizer(path: Path):
    """A CLIP tokenizer whose vocabulary is single letters (no merges): every lower-case word is spelled out,
    so different captions give different tokens."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz!"
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=32), len(vocab)


def make_clip_folder(path: Path) -> Path:
    """A tiny CLIPModel (real transformers classes, random weights) with its processor, saved like a hub repo."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer, vocab_size = make_char_tokenizer(path / "_tok")
    config = CLIPConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(path, safe_serialization=True)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return make_clip_folder(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def zero123_folder(tmp_path_factory) -> Path:
    return make_zero123_folder(tmp_path_factory.mktemp("zero123") / "model")


@pytest.fixture(scope="module")
def vd_folder(tmp_path_factory) -> Path:
    return make_vd_folder(tmp_path_factory.mktemp("vd") / "model")


@pytest.fixture(scope="module")
def ip2p_folder(tmp_path_factory) -> Path:
    return make_ip2p_folder(tmp_path_factory.mktemp("ip2p") / "model")


def read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def check_finite_with_ci(metric: dict) -> None:
    assert metric["value"] is not None and np.isfinite(metric["value"])
    assert metric["ci_low"] <= metric["value"] <= metric["ci_high"]
    if metric["per_sample"] is not None:
        values = [s["value"] for s in metric["per_sample"]]
        assert len(values) == metric["n"] and np.isfinite(values).all()


# ---- metric helpers -----------------------------------------------------------------------------------------


def test_psnr_and_ssim_of_known_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g) * 0.8 + 0.1
    assert np.allclose(M.psnr(x, x), M.PSNR_CAP)
    assert np.allclose(M.psnr(x, x + 0.1), 20.0, atol=1e-3)  # MSE 0.01 → 20 dB
    assert np.allclose(M.ssim(x, x), 1.0, atol=1e-6)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (M.ssim(x, noisy) < 0.9).all()
    assert M.ssim(x[:, :, :6, :6], x[:, :, :6, :6]).shape == (3,)  # images under the 11-pixel window


def test_clip_direction_sign_and_cosine():
    e = torch.eye(4, dtype=torch.float64)
    image_in, text_in = e[0:1], e[2:3]
    image_out = torch.nn.functional.normalize(e[0:1] + e[1:2], dim=-1)  # the image moved towards e1
    towards = torch.nn.functional.normalize(e[2:3] + e[1:2], dim=-1)
    away = torch.nn.functional.normalize(e[2:3] - e[1:2], dim=-1)
    assert M.clip_direction(image_out, image_in, towards, text_in)[0] > 0.5
    assert M.clip_direction(image_out, image_in, away, text_in)[0] < -0.5
    assert M.cosine(e[:2], e[:2]).tolist() == [1.0, 1.0] and M.cosine(e[0:1], e[1:2])[0] == 0.0
    assert M.clip_direction(image_out, image_in, text_in, text_in)[0] == 0.0  # same captions: no direction


def test_frechet_distance_and_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    assert abs(M.frechet_distance(a, a)) < 1e-8
    shift = np.array([1.0, 2.0, 0.0, 0.0, 0.0])
    assert M.frechet_distance(a + shift, a) == pytest.approx(5.0, rel=1e-6)  # same covariance: ‖Δμ‖²
    assert M.frechet_distance(a * 2, a) > 1.0
    with pytest.raises(ValueError, match="at least 2"):
        M.frechet_distance(a[:1], a)
    assert M.frechet_distance(np.arange(5.0), np.arange(5.0) + 1) == pytest.approx(1.0)  # 1-D: n scalar samples
    # fewer samples than dimensions (the n × n route) agrees with the d × d definition (scipy's sqrtm)
    from scipy.linalg import sqrtm

    few, ref = rng.normal(size=(6, 40)) * rng.uniform(0.5, 2, 40), rng.normal(size=(30, 40)) + 0.3
    cov_f, cov_r = np.cov(few, rowvar=False), np.cov(ref, rowvar=False)
    expected = (((few.mean(0) - ref.mean(0)) ** 2).sum() + np.trace(cov_f) + np.trace(cov_r)
                - 2 * np.trace(sqrtm(cov_f @ cov_r)).real)
    assert M.frechet_distance(few, ref) == pytest.approx(expected, rel=1e-6)
    assert M.frechet_distance(few, M.gaussian_fit(ref)) == pytest.approx(expected, rel=1e-6)
    assert M.frechet_distance(a * 2, a) == pytest.approx(  # Σa = 4Σb: tr Σa + tr Σb − 2·2 tr Σb = tr Σb
        (a.mean(0) ** 2).sum() + np.trace(np.cov(a, rowvar=False)), rel=1e-6)
    values = rng.normal(3.0, 1.0, size=50)
    point, low, high = M.bootstrap_ci(values)
    assert point == pytest.approx(values.mean()) and low < point < high and high - low < 1.5
    assert M.bootstrap_ci(values) == M.bootstrap_ci(values)  # seeded


def test_the_toy_uses_the_core_bootstrap():
    from priorswap.plugins.toy import metrics

    assert metrics.bootstrap is M.bootstrap_ci


def test_tiny_clip_embeddings(clip_folder):
    clip = M.Clip.load(str(clip_folder))
    images = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    emb = clip.images(images)
    assert emb.shape == (2, 8) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert np.allclose(M.cosine(emb, clip.images(images)), 1.0, atol=1e-5)
    text = clip.texts(["a photo of a cat", "a dog"])
    assert text.shape == (2, 8) and not torch.allclose(text[0], text[1])


def test_missing_clip_weights_offline_name_the_repo():
    with pytest.raises(M.MetricUnavailable, match=r"nobody/no-such-clip.*hf download nobody/no-such-clip"):
        M.Clip.load("nobody/no-such-clip", offline=True)


def test_tasks_declare_known_metrics():
    from priorswap.plugins.instruct_pix2pix.task import InstructPix2PixTask
    from priorswap.plugins.versatile_diffusion.task import ImageVariationTask
    from priorswap.plugins.zero123.task import NovelViewTask, StableNovelViewTask

    assert NovelViewTask.metrics == StableNovelViewTask.metrics == ("psnr", "ssim", "lpips")
    assert set(ImageVariationTask.metrics) == {"fid", "fd-clip", "clip-image"}
    assert set(InstructPix2PixTask.metrics) == {"clip-image", "clip-text", "clip-direction"}
    for task in (NovelViewTask, ImageVariationTask, InstructPix2PixTask):
        M.check_metric_names(task.metrics, task.name)
    with pytest.raises(priorswap.PriorswapError, match="unknown metric"):
        M.check_metric_names(("psnr", "fidd"), "a task")


# ---- the dataset format ---------------------------------------------------------------------------------------


def test_items_are_validated_with_the_task_inputs(tmp_path):
    from priorswap.plugins.zero123.task import NovelViewTask

    write_png(tmp_path / "views" / "a.png", 0)
    write_png(tmp_path / "views" / "a_30.png", 1)
    folder = write_items(tmp_path, [
        {"image": "views/a.png", "azimuth": 30, "polar": 0, "target": "views/a_30.png", "id": "a30"},
        "",
        {"image": "views/a.png", "azimuth": -30, "polar": 10, "count": 2},
    ])
    items = load_items(folder, NovelViewTask)
    assert [i.id for i in items] == ["a30", "3"]  # default id: the line number (blank lines count)
    assert items[0].inputs.image == tmp_path / "views" / "a.png" and items[0].target == tmp_path / "views/a_30.png"
    assert items[1].target is None and items[1].inputs.count == 2
    assert [i.id for i in load_items(folder, NovelViewTask, limit=1)] == ["a30"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"image": "in.png", "azimuth": 3, "polar": 0, "colour": "red"}, ["line 2", "field 'colour'", "unknown field"]),
        ({"image": "nope.png", "azimuth": 30, "polar": 0}, ["line 2", "field 'image'", "nope.png does not exist"]),
        ({"image": "in.png", "azimuth": 3, "polar": 0, "target": "gone.png"}, ["line 2", "field 'target'", "gone.png"]),
        ({"image": "in.png", "polar": 0}, ["line 2", "field 'azimuth'", "missing"]),
        ({"image": "in.png", "azimuth": "left", "polar": 0}, ["line 2", "field 'azimuth'"]),
        ({"image": "in.png", "azimuth": 0, "polar": 0, "id": "x"}, ["line 2", "field 'id'", "line 1"]),
        ('{"image": "in.png",', ["line 2", "not valid JSON"]),
    ],
)
def test_bad_items_name_the_line_and_field(tmp_path, line, expected):
    from priorswap.plugins.zero123.task import NovelViewTask

    write_png(tmp_path / "in.png", 0)
    folder = write_items(tmp_path, [{"image": "in.png", "azimuth": 0, "polar": 0, "id": "x"}, line])
    with pytest.raises(DatasetError) as info:
        load_items(folder, NovelViewTask)
    message = str(info.value)
    assert all(part in message for part in expected), message
    assert "items.jsonl" in message and "docs/eval.md" in message


def test_a_folder_without_items_is_refused(tmp_path):
    from priorswap.plugins.zero123.task import NovelViewTask

    with pytest.raises(DatasetError, match="no items.jsonl"):
        load_items(tmp_path, NovelViewTask)
    write_items(tmp_path, ["", "  "])
    with pytest.raises(DatasetError, match="holds no items"):
        load_items(tmp_path, NovelViewTask)


# ---- the runner through the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero123_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("z123data")
    write_png(root / "obj" / "src.png", 0)
    write_png(root / "obj" / "az30.png", 1)
    write_png(root / "obj2" / "src.png", 2, size=(20, 20))
    write_png(root / "obj2" / "az90.png", 3, size=(24, 24))  # targets are resized to the output size
    return write_items(root, [
        {"id": "obj-30", "image": "obj/src.png", "azimuth": 30, "polar": 0, "target": "obj/az30.png"},
        {"id": "obj2-90", "image": "obj2/src.png", "azimuth": 90, "polar": -10, "target": "obj2/az90.png"},
    ])


def test_zero123_dataset_eval(tmp_path, capsys, zero123_folder, zero123_data, sd_folder):
    out = tmp_path / "eval"
    code, stdout, err = run_cli(
        capsys, "eval", "--model", str(zero123_folder), "--prior", f"none,{sd_folder}", "--data", str(zero123_data),
        "--guidance", "2", "--steps", "2", "--seeds", "0,1", "--samples-per-item", "2", "--out", str(out),
    )
    assert code == 0, err
    results = read_results(out)
    assert results["task"] == "novel-view" and results["items"] == 2 and results["metrics"] == ["psnr", "ssim", "lpips"]
    assert [(r["method"], r["guidance"]) for r in results["records"]] == [("cfg", 2.0), (f"swap:{sd_folder}", 2.0)]
    for record in results["records"]:
        assert set(record["metrics"]) == {"psnr", "ssim"}
        for metric in record["metrics"].values():
            check_finite_with_ci(metric)
            assert metric["n"] == 2 * 2 * 2 and metric["items"] == 2  # items × seeds × samples per item
    # LPIPS's weights are not in the (test's empty) torch hub cache and the hub is offline: skipped, saying why
    assert "alexnet-owt-7be5be79.pth" in results["skipped"]["lpips"] and "offline" in results["skipped"]["lpips"]
    assert "then run with --allow-pickle" in results["skipped"]["lpips"]  # the next step too, in one message
    # the recorded PSNR is the output's against its own target: recompute one sample independently
    pair = priorswap.load_pair(str(zero123_folder))
    images = pair.sample(image=zero123_data / "obj2/src.png", azimuth=90, polar=-10, guidance="cfg", scale=2.0,
                         steps=2, seed=1, num_samples=2).images
    target = (load_image(zero123_data / "obj2/az90.png", tuple(images.shape[-2:])) + 1) / 2
    expected = M.psnr(images, target.expand_as(images))
    recorded = [s["value"] for s in results["records"][0]["metrics"]["psnr"]["per_sample"]
                if s["item"] == "obj2-90" and s["seed"] == 1]
    assert np.allclose(recorded, expected, atol=1e-4)
    # grid: 2 items × (input, target, cfg, swap) cells of 16 px, scaled up 4× to 64 px, 2 px apart, below the
    # column labels and right of the item ids
    layout = results["grid_layout"]
    assert layout["cell"] == [64, 64] and layout["scale"] == 4 and layout["top"] > 10 and layout["left"] > 10
    with Image.open(out / "samples.png") as grid:
        assert grid.size == (layout["left"] + 4 * 66 + 2, layout["top"] + 2 * 66 + 2)
        assert read_record(out / "samples.png")["eval"]["rows"] == ["obj-30", "obj2-90"]
    page = (out / "results.md").read_text()
    assert "| cfg | 2 |" in page and "psnr ↑" in page
    assert "psnr" in stdout


def test_versatile_diffusion_dataset_eval_with_a_tiny_clip(tmp_path, capsys, vd_folder, clip_folder):
    for i in range(3):
        write_png(tmp_path / "data" / f"img{i}.png", 10 + i, size=(24, 20))
    data = write_items(tmp_path / "data", [{"image": f"img{i}.png"} for i in range(3)])
    out = tmp_path / "eval"
    code, _, err = run_cli(
        capsys, "eval", "--model", str(vd_folder), "--data", str(data), "--clip", str(clip_folder),
        "--guidance", "1.5,3", "--steps", "2", "--out", str(out),
    )
    assert code == 0, err
    results = read_results(out)
    assert [r["guidance"] for r in results["records"]] == [1.5, 3.0]
    for record in results["records"]:
        assert {"fd-clip", "clip-image"} <= set(record["metrics"])
        check_finite_with_ci(record["metrics"]["clip-image"])
        fd = record["metrics"]["fd-clip"]
        assert fd["value"] >= 0 and fd["per_sample"] is None and fd["n"] == 3
        assert fd["ci_low"] <= fd["value"] <= fd["ci_high"]
        assert all(-1 <= s["value"] <= 1 for s in record["metrics"]["clip-image"]["per_sample"])
    assert "weights-inception" in results["skipped"]["fid"]  # not cached here: skipped with the reason
    assert results["clip"] == str(clip_folder)


def test_lpips_and_fid_once_their_weights_are_cached(tmp_path, capsys, zero123_folder, zero123_data, vd_folder):
    """With (stand-in) published weights in the torch hub cache and --allow-pickle, LPIPS and FID are
    computed; the recorded LPIPS of a sample equals the metric computed directly."""
    write_metric_weights(Path(os.environ["TORCH_HOME"]))
    out = tmp_path / "z123"
    code, _, err = run_cli(capsys, "eval", "--model", str(zero123_folder), "--data", str(zero123_data),
                           "--guidance", "2", "--steps", "2", "--seeds", "0", "--allow-pickle", "--out", str(out))
    assert code == 0, err
    results = read_results(out)
    assert "lpips" not in results["skipped"]
    lpips = results["records"][0]["metrics"]["lpips"]
    check_finite_with_ci(lpips)
    assert lpips["n"] == 2 and all(s["value"] > 0 for s in lpips["per_sample"])
    images = priorswap.load_pair(str(zero123_folder)).sample(
        image=zero123_data / "obj/src.png", azimuth=30, polar=0, guidance="cfg", scale=2.0, steps=2, seed=0).images
    target = (load_image(zero123_data / "obj/az30.png", tuple(images.shape[-2:])) + 1) / 2
    recorded = [s["value"] for s in lpips["per_sample"] if s["item"] == "obj-30"]
    assert np.allclose(recorded, M.Lpips(offline=True)(images, target.expand_as(images)), atol=1e-5)

    for i in range(3):
        write_png(tmp_path / "data" / f"img{i}.png", 30 + i, size=(24, 20))
    data = write_items(tmp_path / "data", [{"image": f"img{i}.png"} for i in range(3)])
    out = tmp_path / "vd"
    code, _, err = run_cli(capsys, "eval", "--model", str(vd_folder), "--data", str(data), "--metrics", "fid,psnr",
                           "--out", str(out))
    assert code == 2 and "task 'image-variation' measures" in err and not out.exists()
    code, _, err = run_cli(capsys, "eval", "--model", str(vd_folder), "--data", str(data), "--metrics", "fid",
                           "--guidance", "2", "--steps", "2", "--allow-pickle", "--out", str(out))
    assert code == 0, err
    results = read_results(out)
    assert results["metrics"] == ["fid"] and results["skipped"] == {}  # CLIP is not even loaded
    fid = results["records"][0]["metrics"]["fid"]
    assert fid["value"] > 0 and fid["n"] == 3 and fid["ci_low"] <= fid["value"] <= fid["ci_high"]


def test_instruct_pix2pix_dataset_eval(tmp_path, capsys, ip2p_folder, clip_folder):
    write_png(tmp_path / "data" / "a.png", 20)
    write_png(tmp_path / "data" / "b.png", 21, size=(18, 12))
    data = write_items(tmp_path / "data", [
        {"image": "a.png", "prompt": "a cat", "caption_in": "a photo of a dog", "caption_out": "a photo of a cat"},
        {"image": "b.png", "prompt": ["a dog", "a cat !"]},
    ])
    out = tmp_path / "eval"
    code, _, err = run_cli(
        capsys, "eval", "--model", str(ip2p_folder), "--data", str(data), "--clip", str(clip_folder),
        "--guidance", "3", "--image-guidance", "1.5", "--steps", "2", "--out", str(out),
    )
    assert code == 0, err
    (record,) = read_results(out)["records"]
    assert record["method"] == "cfg" and record["rule"] == "dual-cfg" and record["image_guidance"] == 1.5
    assert read_results(out)["grid_columns"] == ["input", "cfg γT=3 γI=1.5"]  # both scales label a dual column
    metrics = record["metrics"]
    assert set(metrics) == {"clip-image", "clip-text", "clip-direction"}
    for metric in metrics.values():
        check_finite_with_ci(metric)
    assert metrics["clip-image"]["n"] == metrics["clip-text"]["n"] == 3  # one sample per prompt
    assert metrics["clip-direction"]["n"] == 1 and metrics["clip-direction"]["items"] == 1  # captions: item 1 only


def test_with_every_metric_skipped_eval_stops_before_sampling(tmp_path, capsys, ip2p_folder, monkeypatch):
    """Missing CLIP weights skip the three CLIP metrics, each with the reason; with none left, the run stops (exit 2)
    before loading the model: it sampled 4 variants × 100 steps to measure nothing."""
    import priorswap.api

    write_png(tmp_path / "data" / "a.png", 30)
    data = write_items(tmp_path / "data", [{"image": "a.png", "prompt": "a dog", "caption_in": "a cat",
                                            "caption_out": "a dog"}])
    out = tmp_path / "eval"
    monkeypatch.setattr(priorswap.api, "load_pair", lambda *a, **k: pytest.fail("loaded a model to measure nothing"))
    code, _, err = run_cli(capsys, "eval", "--model", str(ip2p_folder), "--data", str(data), "--steps", "1",
                           "--clip", "nobody/no-such-clip", "--out", str(out))
    text = " ".join(err.split())
    assert code == 2 and not out.exists()
    assert all(f"skipped {name}:" in text for name in ("clip-image", "clip-text", "clip-direction"))
    assert "nobody/no-such-clip" in text and "none of the metrics (clip-image, clip-text, clip-direction) can be " \
        "measured here" in text and "nothing was sampled" in text


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"image": "in.png", "azimuth": 30, "polar": 0, "elevation": 5}, ["line 2", "'elevation'"]),
        ({"image": "missing.png", "azimuth": 30, "polar": 0}, ["line 2", "'image'", "missing.png"]),
    ],
)
def test_bad_dataset_exits_2_before_loading_and_writes_nothing(tmp_path, capsys, zero123_folder, line, expected):
    write_png(tmp_path / "data" / "in.png", 0)
    data = write_items(tmp_path / "data", [{"image": "in.png", "azimuth": 0, "polar": 0}, line])
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, "eval", "--model", str(zero123_folder), "--data", str(data), "--out", str(out))
    message = " ".join(err.split())
    assert code == 2 and all(part in message for part in expected), message
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "3"], "--limit only applies with --data DIR"),
        (["--limit", "3", "--clip", "x"], "--limit, --clip only apply with --data DIR"),
        (["--data", "DATA", "--metrics", "psnr,ssim,psnr"], "--metrics repeats psnr: give each value once"),
        (["--data", "DATA", "--samples", "5"], "--samples is for built-in evaluators"),
        (["--data", "DATA", "--samples-per-item", "0"], "--samples-per-item must be at least 1"),
        (["--data", "DATA", "--guidance", "2,x"], "--guidance takes comma-separated numbers"),
    ],
)
def test_option_errors_exit_2(tmp_path, capsys, zero123_folder, zero123_data, args, message):
    args = [str(zero123_data) if a == "DATA" else a for a in args]
    code, _, err = run_cli(capsys, "eval", "--model", str(zero123_folder), "--out", str(tmp_path / "o"), *args)
    assert code == 2 and message in " ".join(err.split())
    assert not (tmp_path / "o").exists()


# ---- eval without --data ---------------------------------------------------------------------------------------


def test_without_data_the_task_evaluator_of_a_plugin_runs(capsys, monkeypatch, tmp_path):
    from priorswap.plugin_manager import get_plugins
    from priorswap.plugins.toy import evaluate

    assert get_plugins().evaluators["toy-view"] == "priorswap.plugins.toy.evaluate:run_request"
    seen = []
    monkeypatch.setattr(evaluate, "run_request", seen.append)
    code, _, err = run_cli(capsys, "eval", "--model", "toy-digits-class", "--prior", "none,toy-digits-base",
                           "--prior", "toy-digits-dit-v", "--guidance", "1.5,3", "--samples", "7", "--seeds", "4",
                           "--ablate-adapters", "--out", str(tmp_path))
    assert code == 0, err
    (request,) = seen
    assert request.model == "toy-digits-class" and request.priors == [None, "toy-digits-base", "toy-digits-dit-v"]
    assert request.guidance == [1.5, 3.0] and request.samples == 7 and request.seeds == [4] and request.steps is None
    assert request.ablate_adapters and request.out == tmp_path and request.data is None


def test_without_data_and_without_an_evaluator_exit_2(capsys, dit_folder):
    code, _, err = run_cli(capsys, "eval", "--model", str(dit_folder))
    message = " ".join(err.split())
    assert code == 2 and "class-label" in message and "--data DIR" in message and "docs/eval.md" in message


def test_input_images_are_opened_before_any_weights_load(tmp_path):
    """Like `target`, the files of image fields (`image`, `end_image`, here the toy tasks' list of images) must be
    images PIL can read, not just exist: a text file named .png is refused up front, naming line and field."""
    from priorswap.plugins.toy.tasks import ToyViewTask
    from priorswap.plugins.zero123.task import NovelViewTask

    write_png(tmp_path / "in.png", 0)
    (tmp_path / "notes.png").write_text("not a picture")
    folder = write_items(tmp_path, [{"image": "in.png", "azimuth": 0, "polar": 0},
                                    {"image": "notes.png", "azimuth": 0, "polar": 0}])
    with pytest.raises(DatasetError, match=r"line 2, field 'image': .*notes.png is not an image file"):
        load_items(folder, NovelViewTask)
    folder = write_items(tmp_path, [{"image": ["in.png"], "angle": 20}, {"image": ["in.png", "notes.png"]}])
    with pytest.raises(DatasetError, match=r"line 2, field 'image': .*notes.png is not an image file") as info:
        load_items(folder, ToyViewTask)
    assert "line 1" not in str(info.value)
    write_items(tmp_path, [{"image": ["in.png"], "angle": 20}])
    assert load_items(tmp_path, ToyViewTask)[0].inputs.image == [tmp_path / "in.png"]  # relative to the folder


def test_eval_data_runs_the_task_check_inputs_per_line_before_loading(tmp_path, capsys, monkeypatch, zero123_folder):
    """What `priorswap sample` checks against the model's entry (`Task.check_inputs`) is checked for every
    line of a dataset too, with the model's resolved entry, and a bad line stops the run before any weights
    load, naming the line."""
    from priorswap import api
    from priorswap.errors import PriorswapError
    from priorswap.plugins.zero123.task import NovelViewTask

    seen = []

    def check_inputs(cls, inputs, entry):
        seen.append((inputs.azimuth, entry.source.path))
        if inputs.azimuth > 90:
            raise PriorswapError(f"azimuth {inputs.azimuth} is beyond what this model was trained on")

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded before the dataset was checked")

    monkeypatch.setattr(NovelViewTask, "check_inputs", classmethod(check_inputs))
    monkeypatch.setattr(api, "load_pair", never)
    write_png(tmp_path / "data" / "in.png", 0)
    data = write_items(tmp_path / "data", [{"image": "in.png", "azimuth": 30, "polar": 0},
                                           {"image": "in.png", "azimuth": 120, "polar": 0}])
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, "eval", "--model", str(zero123_folder), "--data", str(data), "--out", str(out))
    message = " ".join(err.split())
    assert code == 2 and "line 2: azimuth 120.0 is beyond" in message and "line 1" not in message, message
    assert seen == [(30.0, str(zero123_folder.resolve())), (120.0, str(zero123_folder.resolve()))]
    assert not out.exists()
