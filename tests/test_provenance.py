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
    assert grid["seed"] == [1, 2] and grid["grid"] == {"rows": 2, "columns": 2, "row": "task input"}
    assert grid["images"] == ["seed1-00", "seed2-00", "seed1-01", "seed2-01"]  # a row per label, seeds across


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
    fake_latents = tmp_path / "fake.safetensors"
    fake_latents.write_text("not safetensors")
    plain_latents = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"latents": torch.zeros(1, 2)}, plain_latents)
    for path, message in ((plain, "has no priorswap record"), (text, "kept in .png, .gif, .mp4 and .safetensors"),
                          (fake, "not a readable PNG"), (tmp_path / "gone.png", "does not exist"),
                          (fake_latents, "not a readable safetensors file"),
                          (plain_latents, "has no priorswap record"),
                          (tmp_path, f"{tmp_path} is a folder: give a file priorswap wrote")):
        code, out, err = run_cli(capsys, "info", str(written / "grid.png"), str(path))
        assert code == 2 and message in err and out == ""  # every file is read before anything prints
    with pytest.raises(PriorswapError, match="someone else's"):
        other = tmp_path / "other.png"
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("priorswap", json.dumps({"made_by": "another tool"}))
        Image.new("RGB", (4, 4)).save(other, pnginfo=info)
        read_record(other)


def test_records_name_the_device_and_hash_every_input_file_and_latents_carry_one(tmp_path, capsys):
    """A toy-view run from a PNG digit and a held-out index: each record holds the device, torch's version and
    the sha256 of the PNG; --save-latents carries the run's record, which `info` reads and which redoes them."""
    import hashlib

    from safetensors.torch import load_file

    from priorswap.plugins.toy import data

    digit = data.load_digits16("test")[0][7, 0]
    source = tmp_path / "digit.png"
    Image.fromarray(((digit + 1) * 127.5).round().byte().numpy(), "L").save(source)
    latents, each = tmp_path / "z.safetensors", tmp_path / "each"
    code, _, err = run_cli(capsys, "sample", "--model", "toy-digits-view", "--image", str(source), "--source-index",
                           "3", "--angle", "20", "--steps", "4", "--seeds", "5,6", "--save-latents", str(latents),
                           "--out-dir", str(each), "--device", "cpu")
    assert code == 0, err
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    rec = read_record(each / "seed6-01.png")
    assert rec["device"] == "cpu" and rec["torch"] == torch.__version__
    assert rec["inputs"]["image"] == [str(source)] and rec["input_sha256"] == {"image": [sha]}
    batch = read_record(latents)
    assert batch["seed"] == [5, 6] and batch["index"] is None and batch["input_sha256"] == {"image": [sha]}
    assert batch["images"] == ["seed5-00", "seed5-01", "seed6-00", "seed6-01"]
    assert {k: v for k, v in batch.items() if k not in ("seed", "index", "images")} == {
        k: v for k, v in rec.items() if k not in ("seed", "index")}
    # the record alone redoes the saved latents (rows seed by seed)
    pair = priorswap.load_pair(batch["model"]["id"])
    again = [pair.sample(**sample_arguments(batch, seed=s), decode=False).latents for s in batch["seed"]]
    assert torch.equal(torch.cat(again), load_file(latents)["latents"])
    code, out, _ = run_cli(capsys, "info", str(latents))
    out = " ".join(out.split())
    assert code == 0 and sha in out and "cpu, torch" in out and "seed [5, 6]" in out
    code, out, _ = run_cli(capsys, "info", "--json", str(latents))
    assert code == 0 and json.loads(out) == batch
    # another file under the same name is told apart by its hash
    Image.fromarray(((digit.flip(-1) + 1) * 127.5).round().byte().numpy(), "L").save(source)
    redone = pair.sample(image=[source], angle=20.0, steps=1, decode=False).record
    assert redone["input_sha256"]["image"] != [sha] and redone["inputs"] == {**rec["inputs"], "source_index": []}
