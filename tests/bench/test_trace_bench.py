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


def test_trace_benchmark_runs_every_mode_and_keeps_its_invariants(fake_hub, demo_assets, tmp_path):
    result = trace_bench.run_benchmark(
        hub=fake_hub,
        assets=demo_assets,
        work_dir=tmp_path / "work",
        requests=16,
        loads=(float(LOAD),),
        adapters=8,
        download_delay_s=0.02,
        steps=1,
        seed=3,
        trace_kind="round_robin",
        cold_requests=2,
        capacity_samples=3,
        out_dir=tmp_path / "out",
        png=False,
    )
    json.dumps(result)  # one JSON object: everything in it serialises
    assert fake_hub.delay_s == 0.0  # the knobs it set are restored

    # Every mode ran at every load.
    assert set(result["loads"]) == {LOAD}
    modes = result["loads"][LOAD]["modes"]
    assert set(modes) == set(trace_bench.MODES)
    assert result["settings"]["cold_requests"] == 2 and result["capacity"]["service_time_s"] > 0

    # Every request completed exactly once in every mode.
    for mode, summary in modes.items():
        n = 2 if mode == "d_cold_boot" else 16
        assert (summary["requests"], summary["completed"], summary["completed_unique"]) == (n, n, n), mode
        assert summary["failed"] == 0 and summary["completed_more_than_once"] == 0, (mode, summary["errors"])
        assert set(summary["latency_s"]) == {"mean", "p50", "p95", "p99", "max"}

    # Grouping never swaps more than FIFO on a trace that alternates adapters. FIFO on a0 a1 ... a7 a0 ...
    # changes adapter at every request; the reference swaps for every request with a LoRA.
    assert modes["c_engine_grouped"]["swaps_per_request"] <= modes["b_engine_fifo"]["swaps_per_request"]
    assert modes["b_engine_fifo"]["swaps"] == 16 and modes["a_reference"]["swaps"] == 16
    assert modes["b_engine_fifo"]["scheduler"]["dispatched_out_of_order"] == 0

    # The documented wait bound (G2) was checked for both grouped runs and held.
    check = result["targets"]["wait_bound_never_broken"]
    assert set(check["checks"]) == {f"{LOAD}/c_engine_grouped", f"{LOAD}/c_engine_grouped_warm"}
    assert check["pass"], check
    for mode in trace_bench.GROUPED_MODES:
        assert modes[mode]["wait_bound"]["violations"] == 0

    # The targets are reported with a verdict (whatever it is on this machine).
    targets = result["targets"]
    assert {"c_mean_latency_2x_better_than_a_at_0.8", "c_warm_swap_share_under_5pct"} <= set(targets)
    assert all(isinstance(t["pass"], bool) for t in targets.values())
