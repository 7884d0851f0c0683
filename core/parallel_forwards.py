"""Running a step's independent network forwards at the same time on the CPU.

A prior-swap step makes two forwards that do not depend on each other: the model's (its condition) and the
prior's (its null). One after the other, each spreads over all CPU threads, and a batch-1 forward of a big UNet
uses them poorly (its small low-resolution layers leave threads idle). `ForwardThreads` runs them side by side
instead, each in its own worker thread with its share of the intra-op threads (2 threads: one each); the
networks' `Conv2d` layers, once `install`ed, run on ATen's own convolution in the workers (oneDNN's is slow
on one thread for those layers). Nothing process-wide changes: a forward elsewhere in the process runs as
before. `bench/step_time.py` measures what it saves.

A worker sees what the calling thread set for the forward: grad mode, inference mode, CPU autocast and context
variables (condition reuse's scope). Results can differ from sequential forwards in the last bits, as their
sums are split otherwise (fewer threads, another convolution kernel); a run is still deterministic for a given
thread count.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from contextvars import ContextVar
from typing import TypeVar

import torch

from .wrapped_forward import wrap_forward

T = TypeVar("T")


def thread_shares(threads: int, workers: int) -> list[int]:
    """Intra-op threads for each of `workers` concurrent forwards out of `threads`: an even split, the first
    workers taking the remainder, at least one each."""
    base, extra = divmod(max(threads, 1), workers)
    return [max(1, base + (i < extra)) for i in range(workers)]


def _in_worker(call: Callable[[], T]) -> T:
    _ATEN.set(True)  # in this call's own copy of the caller's context: layers `install`ed take ATen's kernel
    return call()


class ForwardThreads:
    """A pool of `workers` threads for concurrent CPU forwards, each with its share of torch's intra-op threads
    (`thread_shares(torch.get_num_threads(), workers)`: give it at most that many workers, or they compete for
    cores). Use as a context manager; `run(calls)` returns the calls' results in order. Leaving the block
    waits for calls under way."""

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
                    return context.run(_in_worker, call)

            return wrapped

        futures = [self._pool.submit(as_caller(call)) for call in calls]
        return [future.result() for future in futures]


_ATEN: ContextVar[bool] = ContextVar("priorswap_aten_convolutions", default=False)
_INSTALLED = "_priorswap_conv_forward"  # the forward it had, once installed


def _conv_forward(self: torch.nn.Conv2d, original: Callable[[torch.Tensor], torch.Tensor],
                  x: torch.Tensor) -> torch.Tensor:
    if (_ATEN.get() and x.device.type == "cpu" and x.dtype == self.weight.dtype and self.groups == 1
            and self.dilation == (1, 1) and self.padding_mode == "zeros" and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled("cpu")):
        return torch._C._nn.thnn_conv2d(x, self.weight, self.kernel_size, self.bias, self.stride, self.padding)
    return original(x)


def install(modules: Iterable[torch.nn.Module]) -> None:
    """Lets the `Conv2d` layers in `modules` run on ATen's own convolution (im2col + GEMM) when called in a
    `ForwardThreads` worker: on one thread each, oneDNN's convolutions of a UNet's wide low-resolution layers
    are several times slower (bench/gemm_batching.py). Called anywhere else, or for a layer ATen's kernel does
    not cover (groups, dilation, padding modes, autocast, mixed dtypes), they run as before. Idempotent; a
    forward already replaced on the instance (e.g. by accelerate's hooks) is kept and called."""
    for module in modules:
        for conv in module.modules():
            if type(conv) is torch.nn.Conv2d:
                wrap_forward(conv, _conv_forward, _INSTALLED)
