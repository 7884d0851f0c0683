"""Run records: what `sample` and `video` embed in their files, `priorswap info`, and redoing a run from one."""

import json

import pytest
import torch
from clihelp import run_cli
from PIL import Image

import priorswap
from priorswap.errors import PriorswapError
from priorswap.images import load_image
from priorswap.provenance import read_record, sample_arguments

MODEL, PRIOR = "toy-digits-class", "toy-digits-base"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One CLI run with two seeds: a grid and one file per sample."""
    import sys

    from priorswap.cli import main

    out = tmp_path_factory.mktemp("prov")
    argv = ["sample", "--model", MODEL, "--prior", PRIOR, "--class-label", "3", "--class-label", "5", "--seeds", "1,2",
            "--steps", "6", "--guidance", "2.5", "--out", str(out / "grid.png"), "--out-dir", str(out / "each")]
    old, sys.argv = sys.argv, ["priorswap", *argv]
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        sys.argv = old
    assert exit_.value.code in (0, None)
    return out


def test_each_file_records_its_run(written):
    registry = priorswap.Registry.load([], priorswap.get_plugins().registry_files)
    rec = read_record(written / "each" / "seed2-01.png")
    assert rec["priorswap"] == priorswap.__version__ and rec["task"] == "toy-class"
    assert rec["model"]["id"] == MODEL and rec["prior"]["id"] == PRIOR and rec["model"]["dtype"] == "float32"
    assert rec["model"]["source"] == registry.entry(MODEL).source.model_dump(mode="json", exclude_defaults=True)
    assert rec["guidance"] == {"method": "prior-swap", "rescale": 0.0, "interval": None, "terms": [
        {"weight": 2.5, "role": "model", "level": "full"}, {"weight": -1.5, "role": "prior", "level": "null"}]}
    assert (rec["steps"], rec["scheduler"], rec["eta"], rec["seed"], rec["index"]) == (6, "ddim", 0.0, 2, 1)
    assert rec["inputs"] == {"class_label": [3, 5]}
    assert rec["command"].startswith(f"priorswap sample --model {MODEL} --prior {PRIOR}")
    grid = read_record(written / "grid.png")
    assert grid["seed"] == [1, 2] and grid["images"] == ["seed1-00", "seed1-01", "seed2-00", "seed2-01"]


def test_a_record_redoes_its_image(written):
    """The record alone reproduces the saved pixels: load what it names, sample with its arguments."""
    rec = read_record(written / "each" / "seed2-01.png")
    pair = priorswap.load_pair(rec["model"]["id"], rec["prior"]["id"])
    again = pair.sample(**sample_arguments(rec)).images[rec["index"]]
    saved = load_image(written / "each" / "seed2-01.png", again.shape[-1])
    assert torch.allclose((again * 2 - 1).expand_as(saved[0]), saved[0], atol=1 / 255 + 1e-6)
    other = pair.sample(**{**sample_arguments(rec), "seed": 1}).images[rec["index"]]
    assert not torch.allclose(other, again, atol=0.05)  # the seed matters: the check above can fail


def test_info_prints_a_record_and_its_json(written, capsys):
    code, out, _ = run_cli(capsys, "info", str(written / "grid.png"), str(written / "each" / "seed1-00.png"))
    assert code == 0 and out.count("prior-swap") == 2 and "2.5·model(full) − 1.5·prior(null)" in out
    code, out, _ = run_cli(capsys, "info", "--json", str(written / "grid.png"))
    assert code == 0 and json.loads(out) == read_record(written / "grid.png")


def test_info_refuses_files_without_a_record(written, tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    for path, message in ((plain, "has no priorswap record"), (text, "kept in .png, .gif and .mp4"),
                          (fake, "not a readable PNG"), (tmp_path / "gone.png", "does not exist")):
        code, out, err = run_cli(capsys, "info", str(written / "grid.png"), str(path))
        assert code == 2 and message in err and out == ""  # every file is read before anything prints
    with pytest.raises(PriorswapError, match="someone else's"):
        other = tmp_path / "other.png"
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("priorswap", json.dumps({"made_by": "another tool"}))
        Image.new("RGB", (4, 4)).save(other, pnginfo=info)
        read_record(other)
