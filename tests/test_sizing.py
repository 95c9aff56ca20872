"""The sizing guide (docs/topics/sizing.rst): the arithmetic of benchmarks/sizing.py, and
the figures the page's prose derives from the default settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import sizing
from slice_connect.conf import DEFAULTS
from slice_connect.oauth import DEFAULT_EXPIRES_IN

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "topics" / "sizing.rst"

POLICY = {
    "renew_within": float(DEFAULTS["RENEW_WITHIN"]),
    "refresh_lifetime": float(DEFAULTS["REFRESH_TOKEN_LIFETIME"]),
    "rate_limit": float(DEFAULTS["RENEW_RATE_LIMIT"]),
    "spread": float(DEFAULTS["RENEW_SPREAD"]),
    "leeway": float(DEFAULTS["ACCESS_TOKEN_LEEWAY"]),
    "access_lifetime": float(DEFAULT_EXPIRES_IN),
    "beat_interval": sizing.BEAT_INTERVAL,
}
# Round made-up measurements: 8 threads, 200/s with Slice next door, 100/s 50 ms away.
MEASURED = {"threads": 8, "rate_0": 200.0, "rate_latency": 100.0, "latency": 0.05, "t1": 0.005}
SWEEP = {"per_second": 50_000.0, "peak_kib": 80_000}
PUBLISH = {"per_second": 1_000.0}


def sized(n: int) -> dict[str, object]:
    return sizing.derive(n, POLICY, sizing.worker_model(MEASURED), SWEEP, PUBLISH)


def test_renewals_follow_the_policy() -> None:
    million = sized(1_000_000)
    assert million["average"] == pytest.approx(1_000_000 / (7 * 86_400))
    assert round(million["per_run"]) == 5_952  # a million / 168 hourly runs a week
    assert million["default_ok"] and million["rate_limit"] == 10  # 18,000 a run suffice
    assert million["window"] == pytest.approx(million["per_run"] / 10)  # at 10 a second
    ten = sized(10_000_000)
    assert not ten["default_ok"]
    assert ten["rate_limit"] == math.ceil(2 * 59_523.8 / 1800) == 67
    assert ten["catch_up_hours"] == 24  # twice the need: a day's backlog in a day
    assert million["api_per_percent"] == pytest.approx(10_000 / 3480)


def test_the_worker_model_gives_back_what_was_measured() -> None:
    model = sizing.worker_model(MEASURED)
    assert model["own"] == pytest.approx(8 / 100 - 0.05)
    assert sizing.process_rate(model, 0.0) == 200.0
    assert sizing.process_rate(model, 0.05) == pytest.approx(100.0)
    assert sizing.process_rate(model, 0.25) == pytest.approx(8 / 0.28)
    assert sizing.child_rate(model, 0.05) == pytest.approx(1 / 0.055)
    ten = sized(10_000_000)
    assert ten["latencies"] == [0.05, 0.25]
    assert ten["processes"] == [1, math.ceil(67 / (8 / 0.28))]
    assert ten["busy_connections"][0] == pytest.approx(67 * 0.08)
    assert ten["sweep_sending_seconds"] == pytest.approx(ten["per_run"] * (1 / 50_000 + 1 / 1000))


def test_the_page_states_what_the_defaults_give() -> None:
    text = " ".join(PAGE.read_text(encoding="utf-8").split())
    averages = [sizing._rate(sized(n)["average"]) for n in sizing.USERS]
    assert averages == ["0.017", "1.65", "16.5"]
    assert "10,000 links need 0.017 renewals a second, a million 1.65, ten million 16.5" in text
    capacity = POLICY["rate_limit"] * POLICY["spread"]
    assert f"{capacity:,.0f} per run" in text
    covered = capacity * POLICY["renew_within"] / POLICY["beat_interval"]
    assert round(covered / 1e6) == 3 and "about three million links" in text
    assert f"{POLICY['access_lifetime'] - POLICY['leeway']:,.0f} s" in text
    assert ".. include:: ../../benchmarks/sizing.rst" in text


def test_the_model_takes_the_threaded_row_at_the_latency_not_the_sequential_one() -> None:
    def row(label: str, concurrency: int, rate: float) -> dict[str, object]:
        return {
            "label": label,
            "rows": 10_000,
            "concurrency": concurrency,
            "renew_per_second": rate,
        }

    throughput = [
        row("PostgreSQL", 8, 400.0),
        row("PostgreSQL, sequential", 1, 250.0),
        row("PostgreSQL, token server +50 ms", 8, 120.0),
        row("PostgreSQL, token server +50 ms, sequential", 1, 18.0),
    ]
    sweeps = {1_000_000: {"all": SWEEP, "default": SWEEP}}
    found = sizing.sizing_results(POLICY, throughput, {"renewal_ms": 4.0}, sweeps, PUBLISH)
    assert found["measured"]["rate_latency"] == 120.0
    assert found["model"]["own"] == pytest.approx(8 / 120 - 0.05)
    with pytest.raises(ValueError, match="the sizing needs"):
        sizing.sizing_results(POLICY, throughput[2:], {"renewal_ms": 4.0}, sweeps, PUBLISH)
