"""Smoke test of ``bench/trace.py``: the whole benchmark in-process on a tiny trace. Structure only, no timings.

It runs on the session's loopback Hub (``HF_ENDPOINT`` already points at it) with 8 adapters requested in turn
(a0 a1 ... a7 a0 ...), all arriving in a burst, so grouping has something to group; the numbers themselves
depend on the machine and are not checked.
"""

from __future__ import annotations

import json

import pytest

from bench import trace as trace_bench

pytestmark = pytest.mark.slow

LOAD = "20"  # far over capacity: the 16 requests arrive while the first still runs


@pytest.fixture(scope="module")
def result(tmp_path_factory, demo_assets):
    from tests.conftest import _HUB  # the session Hub behind the `fake_hub` fixture (module scope needs it)

    tmp = tmp_path_factory.mktemp("trace-bench")
    _HUB.reset()
    try:
        out = trace_bench.run_benchmark(
            hub=_HUB, assets=demo_assets, work_dir=tmp / "work", requests=16, loads=(float(LOAD),), adapters=8,
            download_delay_s=0.02, steps=1, seed=3, trace_kind="round_robin", cold_requests=2, capacity_samples=3,
            out_dir=tmp / "out", png=False,
        )  # fmt: skip
    finally:
        _HUB.reset()
    json.dumps(out)  # one JSON object: everything in it serialises
    return out


def test_every_mode_ran_at_every_load(result):
    assert set(result["loads"]) == {LOAD}
    assert set(result["loads"][LOAD]["modes"]) == set(trace_bench.MODES)
    assert result["settings"]["cold_requests"] == 2
    assert result["capacity"]["service_time_s"] > 0


def test_every_request_completed_exactly_once_in_every_mode(result):
    for mode, summary in result["loads"][LOAD]["modes"].items():
        n = 2 if mode == "d_cold_boot" else 16
        assert (summary["requests"], summary["completed"], summary["completed_unique"]) == (n, n, n), mode
        assert summary["failed"] == 0 and summary["completed_more_than_once"] == 0, (mode, summary["errors"])
        assert set(summary["latency_s"]) == {"mean", "p50", "p95", "p99", "max"}


def test_grouping_swaps_no_more_than_fifo_on_an_alternating_trace(result):
    modes = result["loads"][LOAD]["modes"]
    assert modes["c_engine_grouped"]["swaps_per_request"] <= modes["b_engine_fifo"]["swaps_per_request"]
    # FIFO on a0 a1 ... a7 a0 ... changes adapter at every request; the reference swaps for every LoRA request.
    assert modes["b_engine_fifo"]["swaps"] == 16
    assert modes["a_reference"]["swaps"] == 16
    assert modes["b_engine_fifo"]["scheduler"]["dispatched_out_of_order"] == 0


def test_the_wait_bound_check_ran_and_passed(result):
    check = result["targets"]["wait_bound_never_broken"]
    assert set(check["checks"]) == {f"{LOAD}/c_engine_grouped", f"{LOAD}/c_engine_grouped_warm"}
    assert check["pass"], check
    for mode in trace_bench.GROUPED_MODES:
        bound = result["loads"][LOAD]["modes"][mode]["wait_bound"]
        assert bound["violations"] == 0 and bound["pass"]


def test_targets_are_reported_with_their_numbers(result):
    targets = result["targets"]
    assert {"c_mean_latency_2x_better_than_a_at_0.8", "c_warm_swap_share_under_5pct"} <= set(targets)
    for target in targets.values():
        assert isinstance(target["pass"], bool)
