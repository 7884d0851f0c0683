"""What a batch of 2 costs against a batch of 1, layer by layer, for the layers of an SD UNet.

CFG runs the model on a batch of 2 (conditional + unconditional rows); the prior swap runs two networks on a
batch of 1 each. The swap costs no more than CFG only where a batch of 2 costs twice a batch of 1. This
times, for each resolution level of an SD (2.1 / Zero-1-to-3) UNet at a given latent size, its largest
linear layers (attention projection, GEGLU feed-forward in and out) and its 3×3 convolution at batch 1
and batch 2, interleaved, with 1 and 2 threads, and prints cost(batch 2) / cost(batch 1). Convolutions are
timed with both of PyTorch's CPU backends (oneDNN, the default, and ATen's own im2col + GEMM, used when
`torch.backends.mkldnn.enabled` is False). Random weights and inputs; nothing is downloaded.

    python bench/gemm_batching.py [--latent 32] [--repeats 15] [--threads 1,2] [--tiny]

`--tiny` shrinks channels and repeats (a smoke test; no conclusion).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def _median_ms(fn: Callable[[], object], other: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median time of `fn` and `other`, called alternately after a warm-up."""
    for _ in range(2):
        fn(), other()
    a, b = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        other()
        b.append(time.perf_counter() - t)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def layers(latent: int, base: int) -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    """(name, layer, input shape at batch 1) for each level of an SD UNet at `latent`×`latent`."""
    out = []
    for level, mult in enumerate((1, 2, 4, 4)):
        side, c = latent >> level, base * mult
        tokens = side * side
        if level < 3:  # SD's last down level has no attention
            out += [
                (f"{side}×{side} attention projection {c}→{c}", torch.nn.Linear(c, c), (tokens, c)),
                (f"{side}×{side} GEGLU in {c}→{8 * c}", torch.nn.Linear(c, 8 * c), (tokens, c)),
                (f"{side}×{side} feed-forward out {4 * c}→{c}", torch.nn.Linear(4 * c, c), (tokens, 4 * c)),
            ]
        out.append((f"{side}×{side} conv 3×3 {c}→{c}", torch.nn.Conv2d(c, c, 3, padding=1), (c, side, side)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    base, repeats = (8, 3) if args.tiny else (320, args.repeats)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, float32, latent {args.latent}×{args.latent}, SD UNet channels {base}; "
          f"{repeats} interleaved calls of each after a warm-up")
    print("cost(batch 2) / cost(batch 1): 2.00 means batching saves nothing; below 2, two batch-1 calls on two "
          "networks cost more than one batch-2 call")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        print(f"\nthreads {threads}")
        print(f"{'layer':52s} {'batch 1 ms':>11s} {'batch 2 ms':>11s} {'b2 / b1':>8s}")
        ratios = []
        with torch.inference_mode():
            for name, layer, shape in layers(args.latent, base):
                x1, x2 = torch.randn(1, *shape), torch.randn(2, *shape)
                conv = isinstance(layer, torch.nn.Conv2d)
                backends = (("oneDNN", True), ("native", False)) if conv else ((None, True),)
                for backend, onednn in backends:
                    torch.backends.mkldnn.enabled = onednn  # convolutions: oneDNN or ATen's own (im2col + GEMM)
                    one, two = _median_ms(lambda: layer(x1), lambda: layer(x2), repeats)  # noqa: B023
                    torch.backends.mkldnn.enabled = True
                    ratios.append(two / one)
                    label = f"{name}, {backend}" if backend else name
                    print(f"{label:52s} {one:11.2f} {two:11.2f} {two / one:8.2f}")
        print(f"threads {threads}: b2 / b1 from {min(ratios):.2f} to {max(ratios):.2f}, "
              f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
