"""What a prior's forward saves by reusing the projections of its condition (`priorswap.condition_reuse`).

A prior always sees the same condition (its null), so the key/value projections of its cross-attentions
(and PixArt's caption projection) give the same result at every step, and a sampling run computes them
once. This times a prior's forward as is and as a run's later steps run it (inside `reusing`, after a
first forward that stored the projections), interleaved, on randomly initialised networks of the
published shapes (no download):

  sd-2.1-base   UNet2DConditionModel, 77 context tokens of 1024 dims
  pixart-alpha  PixArtTransformer2DModel (PixArt-α-512 shape), 120 T5 tokens of 4096 dims

at latent 32×32 (256 px, the Zero-1-to-3 pairing) and 64×64 (512 px), batch 1, on CPU.

    python bench/condition_reuse.py [--repeats 6] [--latents 32,64] [--threads N] [--tiny]

`--tiny` runs tiny networks (a smoke test; per-call overhead dominates, no conclusion).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

PIXART = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    cross_attention_dim=1152, caption_channels=4096, patch_size=2, norm_type="ada_norm_single",
    norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
)
PIXART_TINY = {**PIXART, "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2,
               "cross_attention_dim": 16, "caption_channels": 32}


def condition_modules(net: torch.nn.Module) -> list[torch.nn.Module]:
    """What the prior's denoiser reuses: cross-attention K/V projections (and a caption projection)."""
    from priorswap.condition_reuse import cross_attention_projections

    caption = getattr(net, "caption_projection", None)
    return [*cross_attention_projections(net), *([caption] if caption is not None else [])]


def networks(tiny: bool, latent: int):
    """(name, network, forward call) for each prior shape, random weights, at `latent`×`latent`."""
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
    from fullsize import sizes

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sizes(tiny)["prior_unet"]).eval().requires_grad_(False)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    x = torch.randn(1, 4, latent, latent, generator=g)
    t = torch.tensor([500])
    yield "sd-2.1-base", unet, lambda: unet(x, t, encoder_hidden_states=ctx).sample
    cfg = PIXART_TINY if tiny else PIXART
    torch.manual_seed(1)
    pixart = PixArtTransformer2DModel(sample_size=latent, **cfg).eval().requires_grad_(False)
    t5 = torch.randn(1, 120, cfg["caption_channels"], generator=g)
    mask = torch.zeros(1, 120)
    mask[0, 0] = 1  # the empty prompt: one token (EOS)
    extra = {"resolution": None, "aspect_ratio": None}
    yield "pixart-alpha", pixart, lambda: pixart(x, encoder_hidden_states=t5, encoder_attention_mask=mask,
                                                 timestep=t, added_cond_kwargs=extra).sample


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="timed forwards of each variant (interleaved)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all)")
    parser.add_argument("--latents", default="32,64", help="latent sizes to time, comma-separated (default 32,64)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks: a smoke test, no conclusion")
    args = parser.parse_args(argv)
    from priorswap.condition_reuse import reusing

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, batch 1, {args.repeats} "
          "interleaved forwards of each after a warm-up")
    try:
        latents = [int(v) for v in args.latents.split(",")]
    except ValueError:
        parser.error(f"--latents takes comma-separated integers, got {args.latents!r}")
    for latent in (4, 8) if args.tiny else latents:
        for name, net, call in networks(args.tiny, latent):
            mods = condition_modules(net)

            def reused(call=call, mods=mods) -> float:
                with reusing(mods):
                    call()  # a run's first step: computes and stores the projections
                    return timed(call)

            reference = call()
            with reusing(mods):
                call()
                same = torch.equal(call(), reference)
            plain, cached = [], []
            for i in range(args.repeats):
                for variant in ("plain", "reused") if i % 2 == 0 else ("reused", "plain"):  # neither always first
                    if variant == "plain":
                        plain.append(timed(call))
                    else:
                        cached.append(reused())
            a, b = statistics.median(plain), statistics.median(cached)
            paired = statistics.median(c / p for p, c in zip(plain, cached, strict=True))
            print(f"{name:13s} latent {latent}×{latent}: forward {a:7.3f} s, reusing its {len(mods)} condition "
                  f"projections {b:7.3f} s: saves {1 - b / a:5.1%}, median of paired runs "
                  f"{1 - paired:5.1%} (identical output: {same})")
            del net, call
    return 0


if __name__ == "__main__":
    sys.exit(main())
