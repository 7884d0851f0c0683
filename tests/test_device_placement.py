"""Every family samples end to end with its networks on a device other than the CPU, with and without
`offload`. There is no GPU here, so the `meta` device stands in for one: an op that meets a CPU tensor and a
meta tensor raises, as CPU against CUDA does, so a tensor created without the right device fails these tests
(the device-readiness review's method). The values are meaningless on meta; only placement is checked."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_dynamicrafter_sampling import _folder as make_lvdm_folder  # noqa: E402
from test_instruct_pix2pix import make_ip2p_folder, write_png  # noqa: E402
from test_pixart import make_pixart_folder  # noqa: E402
from test_versatile_diffusion import make_vd_folder  # noqa: E402
from test_zero123 import make_zero123_folder  # noqa: E402

import priorswap  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory, dit_folder, sd_folder):
    root = tmp_path_factory.mktemp("placement")
    return {
        "dit": dit_folder, "sd": sd_folder,
        "pixart": make_pixart_folder(root / "pixart"),
        "ip2p": make_ip2p_folder(root / "ip2p"),
        "zero123": make_zero123_folder(root / "zero123"),
        "vd": make_vd_folder(root / "vd"),
        "vd-weaker": make_vd_folder(root / "vd-weaker", seed=1),
        "dc512": make_lvdm_folder(root / "dc512", "dynamicrafter-512", 0),
        "vc2": make_lvdm_folder(root / "vc2", "videocrafter2", 1),
        "image": write_png(root / "in.png", 24, 20, 0),
    }


PAIRS = {
    "dit+sd": ("dit", "sd", {"class_label": [1]}),
    "dit+pixart": ("dit", "pixart", {"class_label": [1]}),
    "instruct-pix2pix+sd": ("ip2p", "sd", {"image": "image", "prompt": "a cat"}),
    "zero123+sd": ("zero123", "sd", {"image": "image", "azimuth": 30.0, "polar": 10.0}),
    "versatile-diffusion+sd": ("vd", "sd", {"image": "image"}),
    "versatile-diffusion autoguidance": ("vd", "vd-weaker", {"image": "image", "guidance": "autoguidance"}),
    "dynamicrafter+videocrafter": ("dc512", "vc2", {"image": "image", "prompt": "a cat"}),
    "dynamicrafter+sd": ("dc512", "sd", {"image": "image", "prompt": "a cat"}),
    "videocrafter": ("vc2", None, {"prompt": "a cat"}),
}


@pytest.mark.parametrize("offload", [False, True], ids=["resident", "offload"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_a_pair_samples_on_another_device(name, offload, folders):
    model, prior, inputs = PAIRS[name]
    inputs = {k: folders[v] if v == "image" else v for k, v in inputs.items()}
    guidance = inputs.pop("guidance", None)
    refs = str(folders[model]), None if prior is None else str(folders[prior])
    # the null-condition cache on disk is filled from real values: once on the CPU (meta has no data to store)
    priorswap.load_pair(*refs).sample(inputs, guidance=guidance, steps=1, decode=False)
    pair = priorswap.load_pair(*refs, device="meta", offload=offload)
    if offload:  # the networks each denoiser lists are under accelerate's hook, which moves them per call
        for denoiser in {id(d): d for d in (pair.model.denoiser, getattr(pair.prior, "denoiser", None)) if d}.values():
            assert all(hasattr(module, "_hf_hook") for module in denoiser.offload_modules())
    on_cpu: set[str] = set()

    def note_cpu_weights(module, args):  # every network runs on the device: none computes with CPU weights
        if any(p.device.type == "cpu" for p in module.parameters(recurse=False)):
            on_cpu.add(type(module).__name__)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(note_cpu_weights)
    try:
        result = pair.sample(inputs, guidance=guidance, steps=2, seed=0, eta=1.0, num_samples=2)
    finally:
        hook.remove()
    assert not on_cpu, f"ran on the CPU: {sorted(on_cpu)}"
    assert result.latents.device.type == "meta"
    assert result.images is not None and result.images.device.type == "meta"


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "xpu", "nonsense"])
def test_load_pair_refuses_a_device_that_is_not_here(device):
    if device.startswith("cuda") and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"{device} exists on this machine")
    with pytest.raises(priorswap.PriorswapError, match=r"^device='[^']+'.*(not a device|no |not available|only )"):
        priorswap.load_pair("toy-digits-class", device=device)
