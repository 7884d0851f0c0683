"""Seconds per step of plain CFG against prior swap on a full-size Zero-1-to-3-shaped model with an
SD 2.1-base-shaped prior, on CPU (the target's setting) or, with `--device cuda`, on a GPU.

The random full-size folders come from bench/fullsize.py (no download). The pair is loaded once with
`priorswap.load_pair(model_folder, prior_folder)`; then, after a warm-up, runs of `--steps` DDIM steps
of the 256 px novel-view task (latent 32×32, decode off) alternate between

  cfg          guidance="cfg":        one forward of the model, batch 2 (condition + null)
  prior-swap   guidance="prior-swap": the model, batch 1 (condition), and the prior, batch 1 (its null),
               one after the other, each on all threads
  cfg ∥        CFG with parallel_forwards=True (the CLI's --parallel-forwards): the two halves of its
               batch at the same time, each on its share of the threads (CPU only)
  swap ∥       the swap with parallel_forwards=True: its two forwards at the same time (CPU only)

The task's conditions (source image through the CLIP image encoder and the VAE encoder) are the same
in every run, so they are computed once and reused, and short runs alternate finely (less drift between
the two sides). A callback timestamps every step, and the networks' forwards are timed too (a step's
time minus its forwards is the engine's own cost, printed per step). The first step of a run also computes what each
network derives from its condition alone (the engine reuses it at later steps), so the script reports
the first step and the later steps apart, and from them the seconds per step of a 50-step run
(Zero-1-to-3's default): (first + 49·later) / 50. It prints the medians of each, the ratio swap/CFG for
the short runs as run and for a 50-step run, and PASS/FAIL against the target swap/CFG ≤ 1.05 on a
50-step run, each method as priorswap runs it fastest here: the faster of its two kinds (on a GPU, where
parallel forwards are refused, the one kind). Then (unless --no-breakdown) it times the bare network forwards
behind each step, to show where a difference comes from.

    flock /tmp/priorswap-bench.lock python bench/step_time.py [--work DIR] [--threads N] [--repeats 10] [--steps 3]
        [--samples 1] [--conv onednn|native]

`--samples N` draws N samples per run (pair.sample's num_samples): CFG's forward then has 2N rows and
each swap forward N. The default is one sample, the setting the target is read at; other N print the same
lines and PASS/FAIL, for comparison.

`--conv native` runs the convolutions on ATen's own path instead of oneDNN (see bench/gemm_batching.py: on
some CPUs oneDNN's 1280-channel convolutions at 8×8 and 4×4 are several times slower, and batch badly).

`--device cuda` (with `--dtype float16` or `bfloat16`) runs the same on a GPU: each timestamp waits for the
device (torch.cuda.synchronize), so a step's time is the device's, not the launch queue's. `--threads` and
`--conv` concern the CPU only.

`--tiny` runs the same on tiny configs in seconds: a smoke test, where per-step Python overhead
dominates (diagnostic only, no target). Exit status: 0 PASS, 1 FAIL.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

TARGET = 1.05
RUN_STEPS = 50  # the paper's Zero-1-to-3 setting: the run length the target is read at
METHODS = {"cfg": {"guidance": "cfg"}, "prior-swap": {"guidance": "prior-swap"},
           "cfg ∥": {"guidance": "cfg", "parallel_forwards": True},
           "swap ∥": {"guidance": "prior-swap", "parallel_forwards": True}}
DEVICE = "cpu"  # set by main from --device
POSE = {"azimuth": 30.0, "polar": 10.0, "radius": 0.0}


def now() -> float:
    """`time.perf_counter()` once the device has finished what was queued (CUDA runs asynchronously)."""
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


def cache_conditions(pair) -> None:
    """Makes the task compute its conditions once per denoiser. Every run has the same source image and
    pose, so their encoding (CLIP image encoder, VAE encoder) is the same each time; cached, a run costs
    only its sampling steps and short runs can alternate finely."""
    compute = pair.task.conditions
    memo: dict[int, dict] = {}

    def conditions(inputs, denoiser):
        if id(denoiser) not in memo:
            memo[id(denoiser)] = compute(inputs, denoiser)
        return memo[id(denoiser)]

    pair.task.conditions = conditions


def time_forwards(pair) -> list[tuple[float, float]]:
    """Wraps the model's and the prior's `forward` to log the (start, end) of every call into the returned list:
    a step's time minus the time within forwards (`busy`) is what the engine adds around the networks."""
    log: list[tuple[float, float]] = []
    for denoiser in (pair.model.denoiser, pair.prior.denoiser):
        def timed(*args, _forward=denoiser.forward, **kwargs):
            start = now()
            out = _forward(*args, **kwargs)
            log.append((start, now()))
            return out

        denoiser.forward = timed
    return log


def busy(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) intervals (forwards that overlap count once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def run_steps(pair, image: Path, method: str, steps: int, samples: int,
              forwards: list[tuple[float, float]]) -> tuple[list[float], float, dict[str, int]]:
    """One sampling run of `steps` steps drawing `samples` samples (conditions cached); returns the seconds
    of each step (the first from the call on), the seconds spent outside the network forwards (logged into
    `forwards` by `time_forwards`) and the forward calls."""
    forwards.clear()
    marks = [now()]
    result = pair.sample(image=image, steps=steps, seed=0, decode=False, num_samples=samples,
                         callback=lambda info: marks.append(now()), **METHODS[method], **POSE)
    durations = [b - a for a, b in itertools.pairwise(marks)]
    return durations, sum(durations) - busy(forwards), result.forward_calls


def per_run(first: float, later: float, steps: int) -> float:
    """Seconds per step of a run of `steps` steps from its first step and a later one."""
    return (first + (steps - 1) * later) / steps


@torch.no_grad()
def forward_breakdown(pair, repeats: int, n: int) -> dict[str, float]:
    """Median seconds of the bare network forwards a step of `n` samples makes: model batch 2n (CFG), model
    batch n and prior batch n (prior swap), on a CPU also at once (parallel forwards: the model's and the
    prior's, and the two halves of CFG's batch), at the 32×32 latent, interleaved. They run as in a sampling
    run, reusing what the networks compute from their conditions alone (`priorswap.condition_reuse`); the
    prior's forward is also timed without that reuse, to show what it saves."""
    from priorswap.condition_reuse import reusing
    from priorswap.parallel_forwards import ForwardThreads, install

    model, prior = pair.model.denoiser, pair.prior.denoiser
    size = model.resolution // model.latent_space.downsample
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * n, model.latent_space.channels, size, size, generator=g).to(model.device, model.dtype)
    t = torch.full((2 * n,), 500, device=model.device)
    m_cond = {k: v.expand(2 * n, *v.shape[1:]) for k, v in model.null_condition().items()}
    p_cond = {k: v.expand(n, *v.shape[1:]) for k, v in prior.null_condition().items()}
    reused = [*model.condition_modules(), *prior.condition_modules()]

    def in_a_run(fn):
        def call():
            with reusing(reused):
                fn()  # the first forward of a run computes the projections: not timed
                start = now()
                fn()
                return now() - start

        return call

    def alone(fn):
        def call():
            start = now()
            fn()
            return now() - start

        return call

    def prior_forward():
        return prior.forward(x[:n].to(prior.dtype), t[:n], p_cond)

    def model_forward():
        return model.forward(x[:n], t[:n], {k: v[:n] for k, v in m_cond.items()})

    def model_second_half():
        return model.forward(x[n:], t[n:], {k: v[n:] for k, v in m_cond.items()})

    calls = {
        f"model, batch {2 * n}": in_a_run(lambda: model.forward(x, t, m_cond)),
        f"model, batch {n}": in_a_run(model_forward),
        f"prior, batch {n}": in_a_run(prior_forward),
        f"prior, batch {n}, no reuse": alone(prior_forward),
    }
    with ExitStack() as stack:
        if DEVICE == "cpu":
            install([*model.offload_modules(), *prior.offload_modules()])  # as a sampling run does
            threads = stack.enter_context(ForwardThreads(2))
            calls[f"model b{n} ∥ prior b{n}"] = in_a_run(lambda: threads.run([model_forward, prior_forward]))
            calls[f"model b{n} ∥ model b{n}"] = in_a_run(lambda: threads.run([model_forward, model_second_half]))
        times: dict[str, list[float]] = {k: [] for k in calls}
        for call in calls.values():  # warm-up
            call()
        for _ in range(repeats):
            for name, call in calls.items():
                times[name].append(call())
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def weight_read_time(module: torch.nn.Module, repeats: int) -> tuple[float, int]:
    """Median seconds to read every parameter of `module` once from memory (a sum over each), and their bytes:
    what a forward pays at least when its layers are bound by fetching their weights, as at batch 1."""
    params = list(module.parameters())
    size = sum(p.numel() * p.element_size() for p in params)
    times = []
    for _ in range(repeats + 1):
        start = now()
        for p in params:
            p.sum()
        times.append(now() - start)
    return statistics.median(times[1:]), size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder that keeps the built model folders between runs (default: temporary)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="weights' dtype (folders are saved and loaded in it)")
    parser.add_argument("--device", default="cpu", help="cpu (the target's setting) or cuda, cuda:1 (default: cpu)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all)")
    parser.add_argument("--steps", type=int, default=3, help="DDIM steps per run (at least 2: a first and later ones)")
    parser.add_argument("--samples", type=int, default=1,
                        help="samples per run (CFG's forward has twice as many rows; each swap forward as many)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each method (interleaved)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each method first")
    parser.add_argument("--conv", choices=["onednn", "native"], default="onednn",
                        help="CPU convolution backend: oneDNN (PyTorch's default) or ATen's own im2col + GEMM "
                             "(torch.backends.mkldnn.enabled = False)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip timing the bare network forwards")
    parser.add_argument("--tiny", action="store_true", help="tiny configs: a smoke test in seconds, no target")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear in order with the builder's output
    if min(args.repeats, args.samples) < 1 or args.steps < 2:
        parser.error("--repeats and --samples must be at least 1, --steps at least 2")
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        parser.error(f"--device {args.device}: " + ("this machine has no CUDA device; use --device cpu"
                                                     if args.device.startswith("cuda") else "cpu or cuda[:N]"))
    global DEVICE
    DEVICE = args.device

    import diffusers
    import transformers
    from fullsize import DTYPES, ensure_folders, param_bytes, work_dir

    import priorswap

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = args.conv == "onednn"
    where = (f"threads {torch.get_num_threads()} of {os.cpu_count()} CPUs, convolutions {args.conv}"
             if DEVICE == "cpu" else f"device {DEVICE} ({torch.cuda.get_device_name(DEVICE)})")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {where}, dtype {args.dtype}, "
          f"python {sys.version.split()[0]}")
    with work_dir(args.work) as work:
        paths = ensure_folders(work, tiny=args.tiny, dtype=args.dtype)
        os.environ["PRIORSWAP_CACHE"] = str(paths["cache"])
        start = time.perf_counter()
        pair = priorswap.load_pair(str(paths["model"]), str(paths["prior"]), dtype=DTYPES[args.dtype], device=DEVICE)
        shape = "×".join(map(str, pair.task.latent_shape(pair.inputs(image=paths["image"], **POSE))))
        print(f"pair loaded in {time.perf_counter() - start:.1f} s: model UNet "
              f"{param_bytes(pair.model.denoiser.net) / 2**20:.0f} MiB, prior UNet "
              f"{param_bytes(pair.prior.denoiser.net) / 2**20:.0f} MiB; latents {shape}, {args.samples} "
              f"sample(s); {args.steps} DDIM steps per run, {args.warmup} warm-up + {args.repeats} interleaved "
              "runs of each")
        cache_conditions(pair)
        forwards = time_forwards(pair)
        methods = list(METHODS) if DEVICE == "cpu" else ["cfg", "prior-swap"]  # parallel forwards: CPU only
        swaps = [m for m in methods if METHODS[m]["guidance"] == "prior-swap"]
        calls: dict[str, dict[str, int]] = {}
        for _ in range(args.warmup):
            for method in methods:
                run_steps(pair, paths["image"], method, args.steps, args.samples, forwards)
        steps_of: dict[str, list[list[float]]] = {m: [] for m in methods}
        outside: dict[str, list[float]] = {m: [] for m in methods}
        for i in range(args.repeats):
            order = methods[i % len(methods):] + methods[:i % len(methods)]  # each runs first in turn
            for method in order:
                durations, extra, calls[method] = run_steps(pair, paths["image"], method, args.steps, args.samples,
                                                            forwards)
                steps_of[method].append(durations)
                outside[method].append(extra / args.steps)
        breakdown = None if args.no_breakdown else forward_breakdown(pair, max(3, args.repeats // 2), args.samples)

    med = statistics.median
    short = {m: [sum(d) / len(d) for d in runs] for m, runs in steps_of.items()}
    first = {m: med(d[0] for d in runs) for m, runs in steps_of.items()}
    later = {m: med(statistics.fmean(d[1:]) for d in runs) for m, runs in steps_of.items()}
    full = {m: per_run(first[m], later[m], RUN_STEPS) for m in methods}
    for m in methods:
        per_step = {k: v // args.steps for k, v in calls[m].items()}
        print(f"{m:11s} runs of {args.steps} steps: median {med(short[m]):7.3f} s/step (min {min(short[m]):.3f}, "
              f"max {max(short[m]):.3f}, {len(short[m])} runs); first step {first[m]:.3f} s, later steps "
              f"{later[m]:.3f} s; outside the network forwards {1000 * med(outside[m]):.0f} ms/step; forwards per step "
              f"{per_step}")
    for m in swaps:
        base = "cfg ∥" if m == "swap ∥" else "cfg"
        paired = med(s / c for c, s in zip(short[base], short[m], strict=True))
        print(f"runs of {args.steps} steps: {m}/{base} = {med(short[m]) / med(short[base]):.3f} (median of the "
              f"ratios of adjacent runs {paired:.3f}); later steps alone: {later[m] / later[base]:.3f}")
    if breakdown:
        print("bare network forwards (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in breakdown.items()))
        n = args.samples
        split = breakdown[f"model, batch {n}"] + breakdown[f"prior, batch {n}"]
        batched = breakdown[f"model, batch {2 * n}"]
        print(f"  model b{n} + prior b{n} = {split:.3f} s vs model b{2 * n} = {batched:.3f} s "
              f"(ratio {split / batched:.3f})")
        both = breakdown.get(f"model b{n} ∥ prior b{n}")
        if both is not None:
            halves = breakdown[f"model b{n} ∥ model b{n}"]
            print(f"  at once, {torch.get_num_threads()} threads shared: model b{n} ∥ prior b{n} = {both:.3f} s vs "
                  f"model b{n} ∥ model b{n} (CFG's halves) = {halves:.3f} s (ratio {both / halves:.3f})")
        saved = 1 - breakdown[f"prior, batch {n}"] / breakdown[f"prior, batch {n}, no reuse"]
        print(f"  reusing the prior's projections of its null condition saves {saved:.0%} of its forward")
        read, size = weight_read_time(pair.prior.denoiser.net, args.repeats)
        print(f"  reading the prior's {size / 2**20:.0f} MiB of weights once takes {read:.3f} s "
              f"({size / read / 1e9:.1f} GB/s), {read / batched:.1%} of the CFG forward: a swap step reads both "
              "networks' weights, a CFG step the model's only")
    swap = min(swaps, key=full.get)  # each method at its fastest here
    cfg = min((m for m in methods if m not in swaps), key=full.get)
    ratio = full[swap] / full[cfg]
    line = (f"a {RUN_STEPS}-step run: " + ", ".join(f"{m} {full[m]:.3f} s/step" for m in methods)
            + f"; fastest swap / fastest CFG = {swap} / {cfg} = {ratio:.3f}")
    if args.tiny:
        print(f"{line}  (tiny networks: per-step overhead dominates; diagnostic only, no target)")
        return 0
    ok = ratio <= TARGET
    print(f"{line}  (target ≤ {TARGET:.2f})  {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
