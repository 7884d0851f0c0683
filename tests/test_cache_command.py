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


# ---- an unusable cache: a clear error or a rebuild, never a traceback ----------------------------------------------
def test_a_cache_setting_that_names_a_file_is_not_an_empty_cache(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("not a folder")
    for setting in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "below"):
        monkeypatch.setenv("PRIORSWAP_CACHE", str(setting))
        for args in (["cache"], ["cache", "--clear", "all"]):
            code, out, err = run_cli(capsys, *args)
            message = " ".join(err.split())
            assert code == 2 and f"the priorswap cache {setting} (PRIORSWAP_CACHE)" in message, message
            assert "not a folder: set PRIORSWAP_CACHE to a folder" in message and "empty" not in out
        code, out, _ = run_cli(capsys, "doctor")
        assert code == 1 and "not a folder: set PRIORSWAP_CACHE" in " ".join(out.split())
    assert (tmp_path / "notes.txt").read_text() == "not a folder"


def test_the_converted_and_recognition_caches_refuse_a_file_setting_too(tmp_path, monkeypatch):
    from priorswap import checkpoints, conversion
    from priorswap.errors import PriorswapError

    (tmp_path / "notes.txt").write_text("not a folder")
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "notes.txt"))
    with pytest.raises(PriorswapError, match="is a file, not a folder"):
        conversion.cache_root()
    with pytest.raises(PriorswapError, match="is a file, not a folder"):
        checkpoints._cache_file(tmp_path / "notes.txt")


def test_sampling_with_a_cache_setting_that_names_a_file_exits_2(tmp_path, monkeypatch, capsys, dit_folder,
                                                                sd_folder):
    (tmp_path / "notes.txt").write_text("not a folder")
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "notes.txt"))
    out = tmp_path / "o.png"
    code, _, err = run_cli(capsys, "sample", "--model", str(dit_folder), "--prior", str(sd_folder), "--class-label",
                           "1", "--steps", "2", "--out", str(out))
    message = " ".join(err.split())
    assert code == 2 and "(PRIORSWAP_CACHE) is a file, not a folder" in message, message
    assert "NotADirectoryError" not in message and "Traceback" not in message and not out.exists()


def test_a_damaged_null_condition_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    import torch

    from priorswap.nullcache import CacheWarning, cache_dir, cached_null

    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "enc").mkdir()
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(4.0)

    assert torch.equal(cached_null(tmp_path / "enc", "k", compute), torch.arange(4.0)) and len(calls) == 1
    assert torch.equal(cached_null(tmp_path / "enc", "k", compute), torch.arange(4.0)) and len(calls) == 1
    (entry,) = cache_dir().iterdir()
    entry.write_bytes(b"garbage, not safetensors")
    with pytest.warns(CacheWarning, match="is damaged .*rebuilding it"):
        assert torch.equal(cached_null(tmp_path / "enc", "k", compute), torch.arange(4.0))
    assert len(calls) == 2
    assert torch.equal(cached_null(tmp_path / "enc", "k", compute), torch.arange(4.0)) and len(calls) == 2  # rebuilt
    assert [p.name for p in cache_dir().iterdir()] == [entry.name]  # no temporary files left


def test_a_null_condition_that_cannot_be_cached_is_still_returned(tmp_path, monkeypatch):
    import torch

    from priorswap.nullcache import CacheWarning, cached_null

    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "null").write_text("a file where the null folder goes")
    (tmp_path / "enc").mkdir()
    with pytest.warns(CacheWarning, match="could not cache the null condition"):
        assert torch.equal(cached_null(tmp_path / "enc", "k", lambda: torch.ones(2)), torch.ones(2))
