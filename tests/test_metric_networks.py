"""priorswap's own LPIPS (AlexNet) and FID Inception networks against the reference implementations
(`lpips`, `torch-fidelity`) with the same random weights. The references are installed apart, in
tests/.reference (see tests/reference-requirements.txt), and put on the path only inside these tests."""

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from clihelp import run_cli
from tiny import write_metric_weights

from priorswap import image_metrics as M
from priorswap.fid_inception import INCEPTION, FidInception, resize_bilinear_tf1
from priorswap.lpips_alexnet import ALEXNET, alexnet_features, heads_file

REFERENCE_PACKAGES = ("torch_fidelity", "lpips", "torchvision")
REFERENCE_DIR = Path(__file__).parent / ".reference"
INSTALL = f"pip install --no-deps --target {REFERENCE_DIR} -r tests/reference-requirements.txt"

# torchvision's alexnet().state_dict() shapes (the published weights file has these names)
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def _require(package: str, monkeypatch) -> importlib.machinery.ModuleSpec:
    monkeypatch.syspath_prepend(str(REFERENCE_DIR))
    spec = importlib.util.find_spec(package)
    if spec is None:
        message = f"the reference package {package} is not installed: {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a missing reference must not pass silently
        pytest.skip(message)
    return spec


@pytest.fixture
def isolated_modules(monkeypatch):
    """The reference packages and the torchvision stand-in are dropped from sys.modules afterwards."""
    yield monkeypatch
    for name in [n for n in sys.modules if n.split(".")[0] in REFERENCE_PACKAGES]:
        del sys.modules[name]


# ---- FID Inception vs torch-fidelity -------------------------------------------------------------------


def _fidelity(monkeypatch) -> ModuleType:
    """torch-fidelity's Inception module, imported without the package __init__ (which imports torchvision)."""
    spec = _require("torch_fidelity", monkeypatch)
    package = ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "torch_fidelity", package)
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


@pytest.mark.parametrize("size", [(32, 32), (48, 80), (512, 384), (299, 299)])
def test_tf1_resize_equals_torch_fidelity(isolated_modules, size):
    _fidelity(isolated_modules)
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    ours = resize_bilinear_tf1(x, (299, 299))
    reference = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    assert ours.shape == (2, 3, 299, 299)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


# ---- LPIPS' AlexNet trunk -------------------------------------------------------------------------------


def test_alexnet_trunk_has_torchvisions_names_and_shapes():
    trunk = {f"features.{k}": tuple(v.shape) for k, v in alexnet_features().state_dict().items()}
    assert trunk == {k: v for k, v in TORCHVISION_ALEXNET.items() if k.startswith("features.")}


# ---- loading the published weights ------------------------------------------------------------------------


def test_metric_weights_come_from_the_torch_hub_cache_under_the_pickle_rule(monkeypatch, tmp_path, capsys):
    """Missing offline: the file and folder are named. Missing online without the opt-in: nothing is
    downloaded and --allow-pickle is asked for. Present: read once with the opt-in, then from the copy."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    downloads = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: downloads.append(a))
    code, out, _ = run_cli(capsys, "doctor")
    assert "LPIPS weights (eval): not cached" in out and "alexnet-owt-7be5be79.pth" in out
    with pytest.raises(M.MetricUnavailable, match="alexnet-owt-7be5be79.pth") as info:
        M.Lpips(offline=True)
    assert str(hub) in info.value.reason and "offline" in info.value.reason
    with pytest.raises(M.MetricUnavailable, match="weights-inception-2015-12-05-6726825d.pth") as info:
        M.InceptionFeatures(offline=True)
    assert str(hub) in info.value.reason
    with pytest.raises(M.MetricUnavailable, match="--allow-pickle"):
        M.InceptionFeatures(offline=False)
    assert downloads == []

    write_metric_weights(tmp_path)
    with pytest.raises(M.MetricUnavailable, match="--allow-pickle"):
        M.Lpips(offline=True)
    lp = M.Lpips(offline=True, allow_pickle=True)
    inception = M.InceptionFeatures(offline=True, allow_pickle=True)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("read the pickle again"))
    code, out, _ = run_cli(capsys, "doctor")
    assert "LPIPS weights (eval): ready" in out and "FID weights (eval): ready" in out
    again = M.Lpips(offline=True)  # the safetensors copies: no opt-in, no torch.load
    M.InceptionFeatures(offline=True)
    g = torch.Generator().manual_seed(7)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    assert (lp(a, b) == again(a, b)).all() and (lp(a, b) > 0).all()
    assert inception(a).shape == (2, 2048)
    assert downloads == []


# ---- the metric wrappers eval uses, on the published-weights path ------------------------------------------


def test_inception_features_wrapper_equals_torch_fidelity_on_8_bit_images(isolated_modules, tmp_path):
    """`image_metrics.InceptionFeatures` (images in [0, 1], loaded like the published file) gives
    torch-fidelity's features of the same images rounded to 8 bits."""
    fidelity = _fidelity(isolated_modules)
    isolated_modules.setenv("TORCH_HOME", str(tmp_path))
    hub = write_metric_weights(tmp_path)
    reference = fidelity.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(hub / INCEPTION.filename))
    assert set(reference.state_dict()) == set(FidInception().state_dict())  # the published file loads by name
    levels = torch.randint(0, 256, (2, 3, 40, 56), generator=torch.Generator().manual_seed(8))
    offsets = (torch.rand(levels.shape, generator=torch.Generator().manual_seed(9)) - 0.5) * 0.8  # < half a level
    images = ((levels + offsets) / 255).clamp(0, 1)
    got = M.InceptionFeatures(offline=True, allow_pickle=True)(images)
    (expected,) = reference(levels.to(torch.uint8))
    assert got.shape == (2, 2048) and expected.abs().mean() > 0.05  # the features are not degenerate
    np.testing.assert_allclose(got, expected.double().numpy(), atol=1e-4, rtol=1e-4)


def test_lpips_wrapper_equals_the_lpips_package(isolated_modules, tmp_path):
    """`image_metrics.Lpips` (images in [0, 1], the published-weights path with torchmetrics' heads) gives the
    lpips package's distance with normalize=True; torchmetrics' heads are lpips' v0.1 heads."""
    _require("lpips", isolated_modules)
    isolated_modules.setenv("TORCH_HOME", str(tmp_path))
    hub = write_metric_weights(tmp_path)
    trunk = alexnet_features()
    backbone = torch.load(hub / ALEXNET.filename, weights_only=True)
    trunk.load_state_dict({k.removeprefix("features."): v for k, v in backbone.items()})
    models = SimpleNamespace(alexnet=lambda **_: SimpleNamespace(features=trunk))
    isolated_modules.setitem(sys.modules, "torchvision", SimpleNamespace(models=models))
    import lpips

    packaged = torch.load(os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth"),
                          map_location="cpu", weights_only=True)
    shipped = torch.load(heads_file(), map_location="cpu", weights_only=True)
    assert packaged.keys() == shipped.keys() and all(torch.equal(packaged[k], shipped[k]) for k in packaged)
    reference = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()
    g = torch.Generator().manual_seed(10)
    a, b = torch.rand(2, 3, 64, 72, generator=g), torch.rand(2, 3, 64, 72, generator=g)
    with torch.no_grad():
        expected = reference(a, b, normalize=True).reshape(-1).double().numpy()
    ours = M.Lpips(offline=True, allow_pickle=True)
    assert expected.min() > 0
    np.testing.assert_allclose(ours(a, b), expected, atol=1e-6, rtol=1e-5)
    assert (ours(a, a) == 0).all()


def test_unreadable_or_foreign_weight_files_skip_the_metric(tmp_path, monkeypatch, capsys):
    """A truncated file or one with other tensors is a skipped metric naming the file, not a crash."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = write_metric_weights(tmp_path)
    inception = hub / INCEPTION.filename
    inception.write_bytes(inception.read_bytes()[:5000])
    with pytest.raises(M.MetricUnavailable, match=f"{INCEPTION.filename} could not be read"):
        M.InceptionFeatures(offline=True, allow_pickle=True)
    assert not any(hub.glob("*.partial"))
    torch.save({"features.0.weight": torch.zeros(3)}, hub / ALEXNET.filename)
    with pytest.raises(M.MetricUnavailable, match="does not fit the network"):
        M.Lpips(offline=True, allow_pickle=True)
    code, out, _ = run_cli(capsys, "doctor")
    assert "FID weights (eval): cached as pickles" in out  # the truncated file got no copy: not ready
