"""Loop detection's bookkeeping (runaway.py `_loop`) against a brute-force model of the
window over a long mixed sequence: the loop alert fires at the same call, for the same
figure, as a recount of the window from scratch on every call says it must."""

from __future__ import annotations

import random
from decimal import Decimal

from devmeter.runaway import RunawayConfig, RunawayDetector
from tests.test_runaway import T0, call


def _mixed_sequence(seed: int, n: int) -> list[tuple[float, str, Decimal]]:
    """Distinct prints, short bursts of one print, A-B cycles and gaps past the window."""
    rng = random.Random(seed)
    out: list[tuple[float, str, Decimal]] = []
    ts, fresh = T0, 0
    while len(out) < n:
        ts += rng.choice((0.5, 2.0, 7.0, 40.0, 400.0))  # 400 s: past a 5 min window
        shape = rng.random()
        cost = Decimal(rng.choice(("0", "0.0031", "0.12", "1.5")))
        if shape < 0.6:
            fresh += 1
            out.append((ts, f"new{fresh}", cost))
        elif shape < 0.85:
            out.append((ts, f"burst{rng.randrange(3)}", cost))
        else:
            out.append((ts, f"cycle{rng.randrange(2)}", cost))
    return out


def _model_alerts(
    calls: list[tuple[float, str, Decimal]], loop_count: int, window_s: float
) -> list[tuple[int, Decimal]]:
    """(call index, figure) of each loop alert, the window recounted on every call."""
    window: list[tuple[float, str, Decimal]] = []
    looping: set[str] = set()
    alerts: list[tuple[int, Decimal]] = []
    for i, (end, fp, cost) in enumerate(calls):
        while window and (window[0][0] <= end - window_s or len(window) >= 4 * loop_count + 64):
            _, old, _ = window.pop(0)
            if all(p != old for _, p, _ in window):
                looping.discard(old)
        window.append((end, fp, cost))
        count = sum(1 for _, p, _ in window if p == fp)
        if count < loop_count or fp in looping:
            continue
        looping.add(fp)
        if len(looping) == 1:
            alerts.append((i, sum((c for _, p, c in window if p == fp), Decimal(0))))
    return alerts


def test_loop_alerts_fire_at_the_same_calls_as_a_recount_of_the_window() -> None:
    loop_count, window_min = 4, 5.0
    calls = _mixed_sequence(seed=16, n=6000)
    detector = RunawayDetector(
        RunawayConfig(loop_count=loop_count, loop_window_minutes=window_min, projection_usd=[])
    )
    seen: list[tuple[int, Decimal]] = []
    for i, (end, fp, cost) in enumerate(calls):
        # duration 0: the call ends at its start, the `end` the model uses
        for alert in detector.observe(call(end, str(cost)), fingerprint=fp, human_turn=None):
            assert alert.kind == "loop"
            seen.append((i, alert.figure_usd))
    expected = _model_alerts(calls, loop_count, window_min * 60)
    assert len(expected) > 20  # the sequence does loop, many times
    assert seen == expected
