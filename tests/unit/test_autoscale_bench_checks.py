"""The autoscale benchmark's checks judge what was sampled: each one fails on a timeline that misses it."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
bench = importlib.import_module("autoscale_bench")

SYNC = bench.HPA_SYNC_PERIOD
KEY = "B's HPA read with a value >= 2 HPA syncs after A scaled"


def timeline(b_value: float | None) -> list:
    """A at 1 replica, loaded, scaled to 3 at t=20, held, back to 1 at t=120; B at 1 throughout with ``b_value``."""
    out = []
    for t in range(0, 130, 2):
        loaded = 5 <= t <= 20 + 2 * SYNC + 1
        a_desired = 3 if 20 <= t < 120 else 1
        out.append(bench.Sample(
            t=float(t), sim={"a": 5.0 if loaded else 0.0}, prom={"a": 5.0 if loaded else 0.0},
            hpa={"a": bench.HpaState(a_desired, a_desired, 5.0 if loaded else 0.0, "ScaleDownStabilized" if t > 60 else "ReadyForNewScale"),
                 "b": bench.HpaState(1, 1, b_value, "ReadyForNewScale")},
            available={"a": a_desired}))
    return out


def test_b_must_be_read_with_a_value_after_a_scaled() -> None:
    ok = bench.timings(timeline(0.0), 0.0, 20 + 2 * SYNC + 1, 120.0, "a", "b", 2.0, 45)
    assert ok["checks"][next(k for k in ok["checks"] if k.startswith(KEY))]
    # The same run with B's HPA at <unknown>: the load was still held two syncs, but B was never read, so it fails.
    unknown = bench.timings(timeline(None), 0.0, 20 + 2 * SYNC + 1, 120.0, "a", "b", 2.0, 45)
    assert not unknown["checks"][next(k for k in unknown["checks"] if k.startswith(KEY))]
    assert unknown["b_observed_after_a_scaled_s"] == 0.0
