"""A family whose network is a plain torch module (not a diffusers or transformers model)."""

from types import SimpleNamespace

import torch

from priorswap.conditions import Condition
from priorswap.denoiser import Denoiser, dtype_and_device
from priorswap.latents import LatentSpace

SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "prediction_type": "v_prediction"}


class PlainNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) + t.reshape(-1, 1, 1, 1) / 1000


class PlainDenoiser(Denoiser):
    def __init__(self, net, request):
        self.init_discrete(net, SCHEDULER, request)

    def forward(self, x, t, cond):
        return self.net(x, t)

    def null_condition(self):
        return Condition()


def request():
    space = LatentSpace(name="pixels", channels=1, scale=1.0, shift=0.0, downsample=1)
    return SimpleNamespace(latent_space=space, entry=SimpleNamespace(resolution=8))


def test_init_discrete_reads_dtype_and_device_of_a_plain_module():
    net = PlainNet().to(torch.float64)
    den = PlainDenoiser(net, request())
    assert den.dtype == torch.float64 and den.device == torch.device("cpu")
    assert den.parameterization == "v_prediction" and den.latent_size == 8
    x0 = den.denoise(torch.randn(2, 1, 8, 8, dtype=torch.float32), 1.5, den.null_condition())
    assert x0.shape == (2, 1, 8, 8) and x0.dtype == torch.float32


def test_dtype_and_device_of_modules_with_and_without_tensors():
    assert dtype_and_device(torch.nn.Linear(2, 2).to(torch.bfloat16)) == (torch.bfloat16, torch.device("cpu"))
    embedding_first = torch.nn.Sequential(torch.nn.Embedding(4, 2), torch.nn.Linear(2, 2))
    assert dtype_and_device(embedding_first)[0] == torch.float32
    assert dtype_and_device(torch.nn.ReLU()) == (torch.float32, torch.device("cpu"))
