"""Smoke test of ``bench/swap.py`` on the demo model: it runs, writes its JSON, and our swaps never drift.

Timings are not checked here (they depend on the machine and its load); the zero-drift property is: after
cycling through the demo adapters and back to the base, every weight is bit-for-bit the base, in every dtype.
"""

from __future__ import annotations

import json

from bench.swap import main


def test_swap_bench_demo_only(demo_assets, tmp_path):
    out = tmp_path / "swap.json"
    result = main(
        [
            "--demo-only",
            "--quick",
            "--device",
            "cpu",
            "--demo-dir",
            str(demo_assets.root),
            "--out",
            str(out),
            "--drift-swaps",
            "24",
            "--drift-cycles",
            "6",
        ]
    )

    assert json.loads(out.read_text()) == result
    assert result["quick"] is True and result["demo_only"] is True
    assert {"cpu_count", "torch", "device", "dtype", "threads"} <= set(result["machine"])
    assert set(result["pass"]) == {
        "warm_vs_memcpy",
        "diffusers_cycle_vs_warm",
        "first_vs_later",
        "drift_elements",
        "rss_growth_pct",
    }
    assert set(result["targets"]) == set(result["pass"])
    assert {"warm_vs_memcpy", "diffusers_cycle_vs_warm", "first_vs_later"} <= set(result["ratios"])
    assert isinstance(result["rss_growth_pct"], float)
    assert "full" not in result

    drift = result["demo"]["drift"]
    assert set(drift) == {"float32", "float16", "bfloat16"}
    for dtype, d in drift.items():
        ours = d["ours"]
        assert ours["swaps"] == 24 and ours["adapters"] >= 3
        assert ours["elements"] == 0 and ours["max_abs"] == 0.0, f"our swaps drifted in {dtype}: {ours}"
        assert ours["all_layers_elements"] == 0
        assert d["diffusers_fuse_unfuse"]["cycles"] == 6
        assert d["diffusers_fuse_unfuse"]["elements"] >= 0
        assert result["demo"]["first_swap_after_load"][dtype]["first_s"] > 0
    assert result["drift_elements"] == {"float32": 0, "float16": 0, "bfloat16": 0}
    assert result["pass"]["drift_elements"] is True
