"""Running a step's independent network forwards at the same time on the CPU.

A prior-swap step makes two forwards that do not depend on each other: the model's (its condition) and the
prior's (its null). One after the other, each spreads over all CPU threads, and a batch-1 forward of a big UNet
uses them poorly (its small low-resolution layers leave threads idle). `ForwardThreads` runs them side by side
instead, each in its own worker thread with its share of the intra-op threads (2 threads: one each), and
with ATen's own convolutions meanwhile (oneDNN's are slow on one thread for those layers). On a 2-core CPU a
full-size swap step then costs what a batch-2 CFG step does; `bench/step_time.py` measures it.

A worker sees what the calling thread set for the forward: grad mode, inference mode, CPU autocast and context
variables (condition reuse's scope). Results can differ from sequential forwards in the last bits, as their
sums are split otherwise (fewer threads, another convolution kernel); a run is still deterministic for a given
thread count.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")


def thread_shares(threads: int, workers: int) -> list[int]:
    """Intra-op threads for each of `workers` concurrent forwards out of `threads`: an even split, the first
    workers taking the remainder, at least one each."""
    base, extra = divmod(max(threads, 1), workers)
    return [max(1, base + (i < extra)) for i in range(workers)]


class ForwardThreads:
    """A pool of `workers` threads for concurrent CPU forwards, each with its share of torch's intra-op threads
    (`thread_shares(torch.get_num_threads(), workers)`). Use as a context manager; `run(calls)` returns the
    calls' results in order."""

    def __init__(self, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"ForwardThreads needs at least 2 workers, got {workers}")
        self.workers = workers
        self.threads = torch.get_num_threads()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> ForwardThreads:
        shares = iter(thread_shares(self.threads, self.workers))
        lock = threading.Lock()
        ready = threading.Barrier(self.workers)

        def start() -> None:
            with lock:
                share = next(shares)
            torch.get_num_threads()  # torch sets a thread's count up on its first use: do it now, not after ours
            torch.set_num_threads(share)  # this thread's OpenMP and MKL threads
            ready.wait()  # every worker starts now, so each takes one share

        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="priorswap-forward", initializer=start)
        for future in [self._pool.submit(int) for _ in range(self.workers)]:
            future.result()
        # set_num_threads also stores the count new threads start with: give the process its own back
        torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Runs `calls` concurrently (in the calling thread's grad mode, inference mode, CPU autocast and
        context) and returns their results in order; an exception in one is raised here."""
        if self._pool is None:
            raise RuntimeError("ForwardThreads.run outside its `with` block")
        grad = torch.is_grad_enabled()
        inference = torch.is_inference_mode_enabled()
        autocast = torch.is_autocast_enabled("cpu")
        autocast_dtype = torch.get_autocast_dtype("cpu")

        def as_caller(call: Callable[[], T]) -> Callable[[], T]:
            context = contextvars.copy_context()

            def wrapped() -> T:
                with ExitStack() as stack:
                    stack.enter_context(torch.inference_mode(inference))
                    stack.enter_context(torch.set_grad_enabled(grad))
                    if autocast:
                        stack.enter_context(torch.autocast("cpu", dtype=autocast_dtype))
                    return context.run(call)

            return wrapped

        with _aten_convolutions():
            futures = [self._pool.submit(as_caller(call)) for call in calls]
            return [future.result() for future in futures]


_switch = threading.Lock()
_switched = 0  # runs under way
_before = True  # torch.backends.mkldnn.enabled before the first of them


@contextmanager
def _aten_convolutions() -> Iterator[None]:
    """ATen's own convolutions (im2col + GEMM) instead of oneDNN's while forwards run side by side: on one
    thread each, oneDNN's convolutions of a UNet's wide low-resolution layers are several times slower
    (bench/gemm_batching.py). The switch is process-wide (torch has no per-thread one); the calling thread
    waits meanwhile, and the last run to finish switches back."""
    global _switched, _before
    with _switch:
        if _switched == 0:
            _before = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _switched += 1
    try:
        yield
    finally:
        with _switch:
            _switched -= 1
            if _switched == 0:
                torch.backends.mkldnn.enabled = _before
