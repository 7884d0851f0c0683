"""Time per sample of the prior swap against plain CFG, on the shipped toy class pair.

CFG runs the fine-tuned UNet once per step on a doubled batch (conditional and null branches
batched together). The prior swap runs the fine-tuned UNet on the conditional branch and the
prior on the unconditional branch: two forward passes of half the batch. With a prior of the same
size the work is the same; the ratio shows what the extra call costs on a CPU. The DiT-v prior is
smaller, so its ratio also includes the difference in network cost.

Times, interleaved A B C A B C ... after a warm-up, `toy-digits-class` with

  A  plain CFG                            (one UNet call on 2·batch per step)
  B  swap with toy-digits-base            (UNet on batch + base UNet on batch)
  C  swap with toy-digits-dit-v           (UNet on batch + DiT on batch, σ-matching inserted)

and prints the median time per sample of each and the ratios B/A and C/A.

    python bench/toy_swap_cost.py [--batch 50] [--steps 25] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import priorswap

MODEL = "toy-digits-class"
METHODS = {
    "A  cfg": None,
    "B  swap: toy-digits-base": "toy-digits-base",
    "C  swap: toy-digits-dit-v": "toy-digits-dit-v",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50, help="samples per call")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats after one warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    labels = [i % 10 for i in range(args.batch)]
    runs = {}
    for name, prior in METHODS.items():
        pair = priorswap.load_pair(MODEL, prior=prior)
        rule = pair.guidance_for("cfg" if prior is None else "prior-swap", 1.5)
        runs[name] = lambda pair=pair, rule=rule: pair.sample(
            class_label=labels, guidance=rule, steps=args.steps, seed=0, decode=False
        )
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    print(f"torch {torch.__version__}, threads {args.threads}; {MODEL}, batch {args.batch}, "
          f"{args.steps} DDIM steps, 1 warm-up + {args.repeats} interleaved repeats")
    per_sample = {}
    for name, ts in times.items():
        per_sample[name] = statistics.median(ts) / args.batch
        print(f"{name:28s} median {1000 * per_sample[name]:7.2f} ms/sample  "
              f"(min {1000 * min(ts) / args.batch:.2f}, max {1000 * max(ts) / args.batch:.2f})")
    names = list(per_sample)
    for name in names[1:]:
        print(f"ratio {name.split()[0]}/A = {per_sample[name] / per_sample[names[0]]:.3f}")


if __name__ == "__main__":
    main()
