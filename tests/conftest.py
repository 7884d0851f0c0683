import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_dit_folder, make_sd_folder  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    """No network, private caches (priorswap, torch hub), and a fixed thread count."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PRIORSWAP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))  # per test; no real metric weights
    monkeypatch.delenv("PRIORSWAP_REGISTRY", raising=False)
    monkeypatch.delenv("PRIORSWAP_PLUGINS", raising=False)
    torch.set_num_threads(1)


@pytest.fixture
def no_loading(monkeypatch):
    """Loading weights fails the test: what it guards must be refused before."""
    import priorswap.api
    import priorswap.loading

    def loaded(*args, **kwargs):
        pytest.fail("weights loaded before the options and inputs were checked")

    monkeypatch.setattr(priorswap.api, "load", loaded)
    monkeypatch.setattr(priorswap.loading, "load", loaded)
    return loaded


@pytest.fixture(scope="session")
def dit_folder(tmp_path_factory) -> Path:
    return make_dit_folder(tmp_path_factory.mktemp("dit") / "model", seed=0)


@pytest.fixture(scope="session")
def dit_prior_folder(tmp_path_factory) -> Path:
    return make_dit_folder(tmp_path_factory.mktemp("dit-prior") / "model", seed=1)


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory) -> Path:
    return make_sd_folder(tmp_path_factory.mktemp("sd") / "model", seed=2)
