"""`priorswap check-golden`: fixtures run through the checker a plugin registers; tolerances per tensor."""

import json

import pytest
import torch
from clihelp import run_cli
from safetensors.torch import save_file

from priorswap import hookimpl, plugin_manager
from priorswap.golden import Produced, check_fixture, tolerance

REFERENCE = {"a": torch.linspace(-1, 1, 12).reshape(3, 4), "b": torch.full((2, 2), 10.0)}


def make_fixture(folder, family="fake", compare=None):
    folder.mkdir(parents=True)
    save_file(REFERENCE, folder / "io.safetensors")
    compare = compare or {"a": 1e-4, "b": {"atol": 0.0, "rtol": 1e-3}}
    (folder / "fixture.json").write_text(json.dumps({"family": family, "kind": "network", "compare": compare}))
    return folder


class FakeFamily:
    """A plugin whose checker perturbs the reference by `error` (relative), or drops a tensor."""

    def __init__(self, error: float = 0.0, drop: str | None = None, extra: list | None = None):
        self.error, self.drop, self.extra = error, drop, extra or []

    def check(self, folder, fixture):
        assert fixture["family"] == "fake" and (folder / "fixture.json").is_file()
        out = {k: v * (1 + self.error) for k, v in REFERENCE.items() if k != self.drop}
        return Produced(out, self.extra)

    @hookimpl
    def register_golden_checks(self, register):
        register("fake", self.check)


@pytest.fixture
def with_plugin(monkeypatch):
    def install(plugin):
        plugins = plugin_manager.Plugins.discover()
        plugins.add(plugin, "fake")
        monkeypatch.setattr(plugin_manager, "_CACHE", plugins)
        return plugins

    return install


def test_tolerance_forms():
    assert tolerance(1e-4) == (1e-4, 0.0)
    assert tolerance({"atol": 1e-4, "rtol": 1e-3}) == (1e-4, 1e-3)
    with pytest.raises(Exception, match="tolerance"):
        tolerance("tight")


@pytest.mark.parametrize(
    ("error", "drop", "ok"),
    [(0.0, None, True), (5e-4, None, True), (2e-3, None, False), (0.0, "b", False)],
)
def test_deviation_against_tolerance(tmp_path, with_plugin, error, drop, ok):
    # b = 10 with rtol 1e-3 → bound 0.01: a relative error of 5e-4 (0.005) passes, 2e-3 (0.02) fails;
    # |a| ≤ 1 with atol 1e-3 behaves the same way
    folder = make_fixture(tmp_path / "fx", compare={"a": 1e-3, "b": {"atol": 0.0, "rtol": 1e-3}})
    result = check_fixture(folder, with_plugin(FakeFamily(error, drop)))
    assert result.ok is ok
    by_name = {c.name: c for c in result.comparisons}
    if drop:
        assert not by_name[drop].ok and "did not produce" in by_name[drop].detail
    else:
        assert by_name["b"].max_abs == pytest.approx(10 * error, rel=1e-3, abs=1e-6)  # float32 rounding


def test_extra_checks_count(tmp_path, with_plugin):
    folder = make_fixture(tmp_path / "fx")
    result = check_fixture(folder, with_plugin(FakeFamily(extra=[("state_dict keys", False, "3 missing")])))
    assert not result.ok and result.comparisons[-1].detail == "3 missing"


def test_cli_exit_codes_and_report(tmp_path, with_plugin, capsys):
    make_fixture(tmp_path / "root" / "one")
    make_fixture(tmp_path / "root" / "other", family="nobody")
    with_plugin(FakeFamily())
    code, out, _ = run_cli(capsys, "check-golden", str(tmp_path / "root" / "one"))
    assert code == 0 and "ok" in out and "1 passed, 0 failed" in out
    code, out, _ = run_cli(capsys, "check-golden", str(tmp_path / "root"))  # finds both; 'nobody' has no plugin
    assert code == 1 and "no installed plugin checks the family 'nobody'" in out
    code, out, _ = run_cli(capsys, "check-golden", "--skip-missing", str(tmp_path / "root"))
    assert code == 0 and "1 skipped" in out
    with_plugin(FakeFamily(error=0.01))
    code, out, _ = run_cli(capsys, "check-golden", str(tmp_path / "root" / "one"))
    assert code == 1 and "FAIL" in out


def test_cli_bad_folder_exits_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "check-golden", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in " ".join(err.split())
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "check-golden", str(tmp_path / "empty"))
    assert code == 2 and "no fixture.json" in " ".join(err.split())


def test_a_broken_fixture_fails_alone_and_is_named(tmp_path, with_plugin, capsys):
    make_fixture(tmp_path / "root" / "good")
    no_reference = make_fixture(tmp_path / "root" / "no_reference")
    (no_reference / "io.safetensors").unlink()
    make_fixture(tmp_path / "root" / "bad_tolerance", compare={"a": "tight"})
    (tmp_path / "root" / "bad_json").mkdir()
    (tmp_path / "root" / "bad_json" / "fixture.json").write_text("{not json")
    with_plugin(FakeFamily())
    code, out, err = run_cli(capsys, "check-golden", str(tmp_path / "root"))
    out = " ".join(out.split())
    assert code == 1 and "1 passed, 3 failed" in out and not err
    assert "no_reference has no io.safetensors" in out
    assert "compare['a']: a tolerance is a number" in out
    assert "bad_json" in out and "is not valid JSON" in out


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"atol": "abc"}, "'atol' must be a number, got \"abc\""),
        ({"atol": None}, "'atol' must be a number, got null"),
        ({"atol": 1e-4, "rtol": -1e-3}, "'rtol' must be a finite number ≥ 0, got -0.001"),
        ({"rtol": True}, "'rtol' must be a number, got true"),
        (True, "a tolerance is a number or {atol, rtol}, got true"),
        (None, "a tolerance is a number or {atol, rtol}, got null"),
        (-1, "a tolerance must be a finite number ≥ 0, got -1"),
        (float("inf"), "a tolerance must be a finite number ≥ 0, got inf"),
    ],
)
def test_a_malformed_tolerance_value_fails_its_fixture_alone(tmp_path, with_plugin, capsys, spec, named):
    """A bad value inside {atol, rtol}, a bool (JSON true is not 1.0) or a negative tolerance: that fixture fails
    with a line naming the tensor and the key; the good fixture beside it is still checked."""
    with pytest.raises(Exception, match="tolerance|atol|rtol"):
        tolerance(spec)
    make_fixture(tmp_path / "root" / "a_bad", compare={"a": 1e-4, "b": spec})
    make_fixture(tmp_path / "root" / "z_good")
    with_plugin(FakeFamily())
    code, out, err = run_cli(capsys, "check-golden", str(tmp_path / "root"))
    out = " ".join(out.split())
    assert code == 1 and not err and "1 passed, 1 failed" in out, out
    assert "FAIL" in out and "a_bad" in out and f"fixture.json: compare['b']: {named}" in out, out


def test_a_fixture_reached_twice_is_checked_once(tmp_path):
    from priorswap.golden import find_all

    one = make_fixture(tmp_path / "root" / "one")
    two = make_fixture(tmp_path / "root" / "two")
    found = find_all([one, tmp_path / "root", tmp_path / "root" / "one" / ".." / "one"])
    assert found == [one, two]


def test_missing_inputs_are_named(tmp_path, with_plugin):
    """A checker reading its inputs through read_inputs / call_of: a missing tensor or call field fails the
    fixture with a message naming it and the file (not a bare KeyError, not 'PriorswapError: ...')."""
    from priorswap.golden import call_of, read_inputs

    class Reads(FakeFamily):
        def __init__(self, tensor=None, field=None):
            super().__init__()
            self.tensor, self.field = tensor, field

        def check(self, folder, fixture):
            io, call = read_inputs(folder), call_of(folder, fixture)
            assert io.get("absent") is None  # optional inputs keep .get
            return {"a": io[self.tensor or "a"], "b": io["b"] * call[self.field or "scale"]}

    folder = make_fixture(tmp_path / "fx")
    fixture = json.loads((folder / "fixture.json").read_text())
    (folder / "fixture.json").write_text(json.dumps({**fixture, "call": {"scale": 1.0}}))
    assert check_fixture(folder, with_plugin(Reads())).ok
    result = check_fixture(folder, with_plugin(Reads(tensor="unet_input")))
    assert result.error == f"{folder / 'io.safetensors'} lacks the input tensor 'unet_input' (it has: a, b)"
    result = check_fixture(folder, with_plugin(Reads(field="steps")))
    assert result.error == f"{folder / 'fixture.json'}'s 'call' lacks the field 'steps' (it has: scale)"
    (folder / "fixture.json").write_text(json.dumps(fixture))
    result = check_fixture(folder, with_plugin(Reads()))
    assert result.error == f"{folder / 'fixture.json'} lacks the field 'call' (it has: compare, family, kind)"


def test_transformers_loading_bars_are_silenced(tmp_path, with_plugin, capsys):
    """A checker that loads a transformers model would print its "Loading weights" bar into the table."""
    from transformers.utils import logging

    class Loads(FakeFamily):
        def check(self, folder, fixture):
            for _ in logging.tqdm(range(3), desc="Loading weights"):  # what from_pretrained shows
                pass
            return super().check(folder, fixture)

    make_fixture(tmp_path / "fx")
    with_plugin(Loads())
    previous = logging.set_tqdm_hook(None)  # as in a fresh process (another test may have silenced them)
    try:
        code, out, err = run_cli(capsys, "check-golden", str(tmp_path / "fx"))
    finally:
        logging.set_tqdm_hook(previous)
    assert code == 0 and "Loading weights" not in out + err, err


def test_cli_counts_a_fixture_once(tmp_path, with_plugin, capsys):
    one = make_fixture(tmp_path / "root" / "one")
    with_plugin(FakeFamily())
    code, out, _ = run_cli(capsys, "check-golden", str(tmp_path / "root"), str(one), str(one) + "/")
    assert code == 0 and "1 passed, 0 failed" in out
