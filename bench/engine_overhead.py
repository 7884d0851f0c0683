"""Engine overhead: priorswap's CFG sampling loop against diffusers' own DiTPipeline on the same folder.

Builds a small random DiT pipeline folder (4 layers, 4 heads × 32, 16×16 latents) in a temporary
directory, then times, interleaved A B A B ... after a warm-up:

  A  DiTPipeline.__call__(class_labels, guidance_scale=4, num_inference_steps=N), VAE decode skipped
  B  priorswap.load_pair(folder).sample(class_label=..., guidance="cfg", scale=4, steps=N, decode=False)

Both sides skip decoding: the pipeline's `vae.decode` is replaced by a stub that records its input
(the final latents) and returns zeros. The script checks that both produce the same final latents,
prints the median times, the ratio B/A and PASS/FAIL against the target B/A ≤ 1.05.

    python bench/engine_overhead.py [--repeats 10] [--steps 25] [--threads 1] [--tiny]

`--tiny` uses the test suite's tiny DiT (tests/tiny.py) instead: the network then costs almost
nothing, so B − A per step is the engine's fixed Python overhead (not a target, a diagnostic).

One thread by default: on a small shared machine, an OpenMP thread that loses its core to another
process stalls every parallel region, and timings swing by up to 10× (seen with --threads 2 on a
2-core machine while another job was running). Use --threads to compare at other settings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

LABELS = [3, 7, 207, 980]
SCALE = 4.0
TARGET = 1.05


def build_folder(path: Path, tiny: bool = False) -> Path:
    """A DiTPipeline folder built by the tests' helper: the tests' tiny DiT, or a small one (4 layers,
    4 heads × 32, 16×16 latents) big enough that the network dominates."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny import make_dit_folder

    if tiny:
        return make_dit_folder(path, seed=0)
    return make_dit_folder(path, seed=0, sample_size=16, heads=4, head_dim=32, layers=4, noise=0.02)


def make_pipeline(folder: Path):
    """The diffusers pipeline with a decode stub that captures the final (model-space) latents."""
    from diffusers import DiTPipeline
    from diffusers.models.autoencoders.vae import DecoderOutput

    pipe = DiTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    captured: dict[str, torch.Tensor] = {}
    scaling = pipe.vae.config.scaling_factor
    down = 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    def decode(z, *args, **kwargs):
        captured["latents"] = z * scaling  # the pipeline divides by the scaling factor first
        b, _, h, w = z.shape
        return DecoderOutput(sample=torch.zeros(b, 3, h * down, w * down, dtype=z.dtype))

    pipe.vae.decode = decode
    return pipe, captured


def run_pipeline(pipe, steps: int) -> None:
    pipe(class_labels=LABELS, guidance_scale=SCALE, num_inference_steps=steps,
         generator=torch.Generator().manual_seed(0), output_type="pt")


def run_priorswap(pair, steps: int):
    return pair.sample(class_label=LABELS, guidance="cfg", scale=SCALE, steps=steps, seed=0, decode=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each side (interleaved)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each side first")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny DiT: measures fixed per-step overhead")
    args = parser.parse_args(argv)

    import diffusers

    import priorswap

    diffusers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PRIORSWAP_CACHE", str(Path(tmp) / "cache"))
        folder = build_folder(Path(tmp) / "dit", tiny=args.tiny)
        pipe, captured = make_pipeline(folder)
        pair = priorswap.load_pair(str(folder))
        n_params = sum(p.numel() for p in pipe.transformer.parameters())
        size = pipe.transformer.config.sample_size
        print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, threads {torch.get_num_threads()}, "
              f"python {sys.version.split()[0]}")
        kind = "DiT (tests' tiny)" if args.tiny else "DiT"
        print(f"{kind}: {n_params / 1e6:.3f}M params, latents {len(LABELS)}×4×{size}×{size}, "
              f"CFG batch {2 * len(LABELS)}, {args.steps} DDIM steps, scale {SCALE:g}; "
              f"{args.warmup} warm-up + {args.repeats} interleaved repeats")

        for _ in range(args.warmup):
            run_pipeline(pipe, args.steps)
            run_priorswap(pair, args.steps)

        # Same computation? Compare the final latents relative to their size.
        run_pipeline(pipe, args.steps)
        ref = captured["latents"]
        out = run_priorswap(pair, args.steps).latents
        rel = (out - ref).abs().max().item() / ref.abs().max().item()
        agree = rel <= 1e-4
        print(f"final latents: max |B − A| / max |A| = {rel:.2e} ({'agree' if agree else 'DIFFER'})")

        times: dict[str, list[float]] = {"A": [], "B": []}
        for i in range(args.repeats):
            # alternate which side goes first so neither always runs on a warmer cache
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            for side in order:
                start = time.perf_counter()
                if side == "A":
                    run_pipeline(pipe, args.steps)
                else:
                    run_priorswap(pair, args.steps)
                times[side].append(time.perf_counter() - start)

    med_a = statistics.median(times["A"])
    med_b = statistics.median(times["B"])
    ratio = med_b / med_a
    paired = statistics.median(b / a for a, b in zip(times["A"], times["B"], strict=True))
    print(f"A  diffusers DiTPipeline   median {med_a * 1e3:8.1f} ms  (min {min(times['A']) * 1e3:.1f}, "
          f"max {max(times['A']) * 1e3:.1f})")
    print(f"B  priorswap pair.sample   median {med_b * 1e3:8.1f} ms  (min {min(times['B']) * 1e3:.1f}, "
          f"max {max(times['B']) * 1e3:.1f})")
    print(f"per step: A {med_a / args.steps * 1e3:.2f} ms, B {med_b / args.steps * 1e3:.2f} ms, "
          f"B − A {(med_b - med_a) / args.steps * 1e3:+.2f} ms")
    print(f"median of paired ratios B_i/A_i = {paired:.3f}")
    if args.tiny:  # the network is negligible here: the ratio shows fixed overhead, not the target
        print(f"ratio B/A = {ratio:.3f}  (tiny network: diagnostic only, no target)  "
              f"{'latents agree' if agree else 'FAIL: latents differ'}")
        return 0 if agree else 1
    ok = ratio <= TARGET and agree
    print(f"ratio B/A = {ratio:.3f}  (target ≤ {TARGET:.2f}×)  {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
