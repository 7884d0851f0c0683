"""`priorswap cache`: what the cache holds (a real conversion, a pickle copy, null conditions), and clearing it."""

from pathlib import Path

import pytest
from clihelp import run_cli

import priorswap
from priorswap.conversion import converted_folder
from priorswap.registry import ModelEntry, Source


@pytest.fixture
def filled(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "model.safetensors").write_bytes(b"weights")

    def convert(checkpoint: Path, entry, out: Path, **_):
        (out / "unet").mkdir()
        (out / "unet" / "model.safetensors").write_bytes(b"x" * 3000)

    family = priorswap.Family(name="fam", load=lambda request: None, convert=convert)
    entry = ModelEntry(plugin="fam", source=Source(path=str(tmp_path / "release"), file="model.safetensors"),
                       latent_space="sd-kl-f8", resolution=64, variant="v1")
    folder = converted_folder(entry, family, log=lambda msg: None)
    for kind, name in (("null", "abc.safetensors"), ("converted/pickles/k1", "model.safetensors")):
        (tmp_path / "cache" / kind).mkdir(parents=True, exist_ok=True)
        (tmp_path / "cache" / kind / name).write_bytes(b"y" * 1000)
    return tmp_path / "cache", folder


def test_lists_and_clears_the_cache(filled, capsys):
    from priorswap.cache import items

    root, folder = filled
    found = {item.kind: item for item in items()}
    assert sorted(found) == ["converted", "null", "pickles"]
    assert found["converted"].path == folder and found["converted"].what.endswith("model.safetensors → fam v1")
    assert found["converted"].bytes > 3000 and found["null"].bytes == 1000
    code, out, err = run_cli(capsys, "cache")
    assert code == 0, err
    assert all(kind in out for kind in found) and "fam" in out
    code, out, _ = run_cli(capsys, "cache", "--clear", "converted")
    assert code == 0 and "deleted 1 cached item(s)" in out
    assert not folder.exists() and (root / "null" / "abc.safetensors").is_file()
    assert (root / "converted" / "pickles" / "k1" / "model.safetensors").is_file()
    code, out, _ = run_cli(capsys, "cache", "--clear", "all")
    assert code == 0 and "deleted 2 cached item(s)" in out
    code, out, _ = run_cli(capsys, "cache")
    assert "is empty" in out


def test_an_unknown_kind_is_a_usage_error(filled, capsys):
    root, folder = filled
    code, _, err = run_cli(capsys, "cache", "--clear", "models")
    message = " ".join(err.split())
    assert code == 2 and "unknown cache kind models: use converted, pickles, null, checkpoints or all" in message
    assert folder.is_dir()
