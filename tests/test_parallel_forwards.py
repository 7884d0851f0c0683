"""Parallel forwards: a step's model and prior forwards at once on CPU threads (`priorswap.parallel_forwards`)."""

import threading
from contextvars import ContextVar

import pytest
import torch
from clihelp import run_cli

import priorswap
from priorswap.condition_reuse import _active
from priorswap.engine import Route, Sampler
from priorswap.errors import GuidanceError, PriorswapError
from priorswap.parallel_forwards import ForwardThreads, thread_shares
from priorswap.provenance import read_record, sample_arguments

MODEL, PRIOR = "toy-digits-class", "toy-digits-base"


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pair():
    return priorswap.load_pair(MODEL, prior=PRIOR)


def test_threads_are_shared_out_evenly_and_each_worker_gets_one():
    assert thread_shares(2, 2) == [1, 1]
    assert thread_shares(3, 2) == [2, 1]
    assert thread_shares(8, 3) == [3, 3, 2]
    assert thread_shares(1, 2) == [1, 1]
    with pytest.raises(ValueError, match="at least 2 workers"):
        ForwardThreads(1)


def test_calls_run_at_the_same_time(two_threads):
    """Each call waits for the other at a barrier: one after the other, the first would time out."""
    meet = threading.Barrier(2, timeout=10)
    with ForwardThreads(2) as threads:
        assert threads.run([meet.wait, meet.wait]) in ([0, 1], [1, 0])


def test_workers_compute_in_the_callers_modes_on_their_share_of_threads(two_threads):
    marker: ContextVar[str] = ContextVar("marker", default="unset")

    def state():
        return (torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                marker.get(), torch.get_num_threads(), threading.current_thread().name)

    token = marker.set("caller's")
    try:
        with ForwardThreads(2) as threads, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            seen = threads.run([state, state])
            assert torch.get_num_threads() == 2  # the caller keeps its threads
        with ForwardThreads(2) as threads:
            plain = threads.run([state])[0]
    finally:
        marker.reset(token)
    for grad, autocast, dtype, value, n, name in seen:
        assert (grad, autocast, dtype, value, n) == (False, True, torch.bfloat16, "caller's", 1)
        assert name.startswith("priorswap-forward")
    assert plain[:2] == (True, False)
    later: list[int] = []  # a thread started afterwards gets the process's count, not a worker's share
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [2]


def test_an_error_in_a_call_is_raised_to_the_caller():
    def fails():
        raise RuntimeError("forward failed")

    with ForwardThreads(2) as threads, pytest.raises(RuntimeError, match="forward failed"):
        threads.run([lambda: 1, fails])
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        threads.run([lambda: 1])


def test_a_parallel_run_matches_the_sequential_one_and_says_so_in_its_record(pair, two_threads, monkeypatch):
    aten = torch._C._nn.thnn_conv2d
    atens: list[str] = []
    monkeypatch.setattr(torch._C._nn, "thnn_conv2d", lambda *a: atens.append(threading.current_thread().name)
                        or aten(*a))
    where: dict[str, set] = {"model": set(), "prior": set()}
    scoped: list[bool] = []
    originals = {}
    for role in where:
        denoiser = getattr(pair, role).denoiser
        originals[role] = denoiser.forward

        def spy(*args, _role=role, _forward=denoiser.forward, **kwargs):
            where[_role].add(threading.current_thread().name)
            scoped.append(_active.get() is not None)  # condition reuse reaches the worker
            return _forward(*args, **kwargs)

        denoiser.forward = spy
    try:
        kwargs = {"class_label": [3, 7], "guidance": "prior-swap", "steps": 6, "seed": 4, "decode": False}
        plain = pair.sample(**kwargs)
        assert all(name == threading.current_thread().name for names in where.values() for name in names)
        where["model"].clear()
        where["prior"].clear()
        parallel = pair.sample(**kwargs, parallel_forwards=True)
    finally:
        for role, forward in originals.items():
            getattr(pair, role).denoiser.forward = forward
    assert all(name.startswith("priorswap-forward") for names in where.values() for name in names)
    assert where["model"] and where["prior"] and all(scoped)
    assert atens and all(name.startswith("priorswap-forward") for name in atens)  # the networks' convolutions
    assert parallel.forward_calls == plain.forward_calls == {"model": 6, "prior": 6}
    torch.testing.assert_close(parallel.latents, plain.latents, atol=1e-5, rtol=1e-5)
    assert parallel.record["parallel_forwards"] is True and "parallel_forwards" not in plain.record
    again = pair.sample(**sample_arguments(parallel.record))
    assert torch.equal(again.latents, parallel.latents)  # deterministic, and the record redoes it


def test_parallel_forwards_is_refused_off_the_cpu_and_when_not_a_bool(pair):
    denoiser = pair.prior.denoiser
    gpu = type("OnGPU", (), {"device": torch.device("cuda", 0), "schedule": denoiser.schedule})()
    conditions = {("model", "full"): {}, ("prior", "null"): {}}
    routes = {"model": Route(pair.model.denoiser), "prior": Route(gpu, match="continuous")}
    with pytest.raises(GuidanceError, match=r"prior on cuda:0: leave it off on a GPU"):
        Sampler(routes, conditions, priorswap.prior_swap(2.0), object(), parallel_forwards=True)
    with pytest.raises(PriorswapError, match="parallel_forwards must be True or False, got 'yes'"):
        pair.sample(class_label=[3], parallel_forwards="yes")


def test_the_cli_flag_samples_records_and_shows_it(tmp_path, capsys, monkeypatch, two_threads):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, "sample", "--model", MODEL, "--prior", PRIOR, "--class-label", "3", "--steps", "4",
                           "--device", "cpu", "--parallel-forwards", "--out", str(out))
    assert code == 0, err
    assert read_record(out)["parallel_forwards"] is True
    code, shown, _ = run_cli(capsys, "info", str(out))
    assert code == 0 and "parallel forwards" in shown
    import priorswap.checks

    monkeypatch.setattr(priorswap.checks, "device", lambda *args, **kwargs: "cuda")  # as on a machine with a GPU
    code, _, err = run_cli(capsys, "sample", "--model", MODEL, "--prior", PRIOR, "--class-label", "3",
                           "--parallel-forwards", "--out", str(tmp_path / "none.png"))
    assert code == 2 and "--parallel-forwards runs forwards side by side on CPU threads" in err
    assert "add --device cpu" in err and not (tmp_path / "none.png").exists()


def test_sample_suggests_the_flag_on_a_cpu_for_big_networks_only(tmp_path, capsys, monkeypatch, two_threads):
    import priorswap.cli as cli

    args = ["sample", "--model", MODEL, "--prior", PRIOR, "--class-label", "3", "--steps", "2", "--device", "cpu",
            "--save-latents", str(tmp_path / "x.safetensors")]
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "tip: --parallel-forwards" not in err  # the toy networks are tiny
    monkeypatch.setattr(cli, "PARALLEL_TIP_PARAMETERS", 1)
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "tip: --parallel-forwards" in err
    code, _, err = run_cli(capsys, *args, "--parallel-forwards")
    assert code == 0 and "tip:" not in err
    alone = [a for a in args if a not in (PRIOR, "--prior")]
    code, _, err = run_cli(capsys, *alone)  # CFG: one forward of 2 rows, split in two
    assert code == 0 and "tip: --parallel-forwards" in err


def test_installed_convolutions_take_atens_kernel_in_the_workers_only(monkeypatch, two_threads):
    """oneDNN's convolutions are slow on one thread each: an installed Conv2d takes ATen's kernel in a worker,
    and only there (nothing process-wide changes; a plain call, or one ATen's kernel does not cover, does not)."""
    from priorswap.parallel_forwards import install

    plain, grouped = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1, groups=2)
    x = torch.randn(1, 4, 6, 6)
    expected = {id(plain): plain(x), id(grouped): grouped(x)}
    install([torch.nn.Sequential(plain, grouped)])
    install([plain])  # idempotent
    used: list[str] = []
    aten = torch._C._nn.thnn_conv2d

    def spy(*args):
        used.append(threading.current_thread().name)
        return aten(*args)

    monkeypatch.setattr(torch._C._nn, "thnn_conv2d", spy)
    with ForwardThreads(2) as threads:
        outs = threads.run([lambda: (plain(x), torch.backends.mkldnn.enabled), lambda: grouped(x)])
    assert len(used) == 1 and used[0].startswith("priorswap-forward")  # the plain layer, in its worker
    assert outs[0][1] is torch.backends.mkldnn.enabled  # the process's setting is left alone
    torch.testing.assert_close(outs[0][0], expected[id(plain)])
    assert torch.equal(outs[1], expected[id(grouped)])
    assert torch.equal(plain(x), expected[id(plain)]) and len(used) == 1  # outside a worker: as before
    with ForwardThreads(2) as threads, torch.autocast("cpu", dtype=torch.bfloat16):
        threads.run([lambda: plain(x)])
    assert len(used) == 1  # under autocast: as before


def test_on_one_thread_a_parallel_run_runs_its_forwards_in_turn(pair):
    names: set[str] = set()
    forward = pair.prior.denoiser.forward

    def spy(*args, **kwargs):
        names.add(threading.current_thread().name)
        return forward(*args, **kwargs)

    before = torch.get_num_threads()
    pair.prior.denoiser.forward = spy
    try:
        torch.set_num_threads(1)
        result = pair.sample(class_label=[3], steps=2, decode=False, parallel_forwards=True)
    finally:
        torch.set_num_threads(before)
        pair.prior.denoiser.forward = forward
    assert names == {threading.current_thread().name}
    assert "parallel_forwards" not in result.record  # the record says what ran


def test_the_tip_is_for_alike_forwards_only(pair, monkeypatch, two_threads):
    """A dual swap's model forward carries two branches and the prior's one: side by side the prior's thread
    would idle half the time, so sample does not suggest it there."""
    import priorswap.cli as cli

    monkeypatch.setattr(cli, "PARALLEL_TIP_PARAMETERS", 1)
    assert cli._parallel_would_help(pair, priorswap.prior_swap(2.0), "cpu", 1)
    assert cli._parallel_would_help(pair, priorswap.cfg(2.0), "cpu", 1)  # 2 rows: one each
    assert not cli._parallel_would_help(pair, priorswap.dual_prior_swap(1.5, 7.5), "cpu", 1)
    assert not cli._parallel_would_help(pair, priorswap.dual_cfg(1.5, 7.5), "cpu", 1)  # 3 rows
    assert not cli._parallel_would_help(pair, priorswap.prior_swap(2.0), "cpu", 4)  # big batches: slower
    assert not cli._parallel_would_help(pair, priorswap.prior_swap(2.0), "cuda", 1)


def test_a_cfg_step_runs_the_halves_of_its_batch_side_by_side(pair, two_threads):
    """One forward of 2·n rows (condition + null) becomes two of n rows in the workers: the same predictions."""
    calls: list[tuple[str, int]] = []
    forward = pair.model.denoiser.forward

    def spy(x, *args, **kwargs):
        calls.append((threading.current_thread().name, x.shape[0]))
        return forward(x, *args, **kwargs)

    kwargs = {"class_label": [3, 7], "guidance": "cfg", "steps": 4, "seed": 2, "decode": False}
    plain = pair.sample(**kwargs)
    pair.model.denoiser.forward = spy
    try:
        parallel = pair.sample(**kwargs, parallel_forwards=True)
    finally:
        pair.model.denoiser.forward = forward
    assert len(calls) == 8 and all(name.startswith("priorswap-forward") and rows == 2 for name, rows in calls)
    assert parallel.forward_calls == plain.forward_calls == {"model": 4}  # a split forward counts once
    torch.testing.assert_close(parallel.latents, plain.latents, atol=1e-5, rtol=1e-5)
    assert not torch.equal(parallel.latents, pair.sample(**{**kwargs, "seed": 3}).latents)


def test_a_plain_run_beside_a_parallel_one_is_unchanged(pair, two_threads):
    """Parallel forwards change nothing process-wide: a run in another thread of the process, without them,
    gives its result bit for bit while a parallel run goes on beside it."""
    kwargs = {"class_label": [3], "guidance": "prior-swap", "steps": 8, "seed": 1, "decode": False}
    alone = pair.sample(**kwargs).latents
    stop = threading.Event()

    def beside():
        while not stop.is_set():
            pair.sample(class_label=[7], steps=8, decode=False, parallel_forwards=True)

    neighbour = threading.Thread(target=beside)
    neighbour.start()
    try:
        runs = [pair.sample(**kwargs).latents for _ in range(3)]
    finally:
        stop.set()
        neighbour.join()
    assert all(torch.equal(run, alone) for run in runs)
