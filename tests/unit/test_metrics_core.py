"""The pieces of metrics that need no socket: bucket placement, quantiles, close-reason labels, the
metrics_listen parser, and the history ring's bound."""

from __future__ import annotations

from bisect import bisect_left

import pytest

from pgmux.config.values import listen_address, split_listen
from pgmux.metrics.events import MAX_KINDS, Events, reason_kind
from pgmux.metrics.history import History
from pgmux.pooling.histogram import BOUNDS, Histogram, bucket, quantile


def test_an_observation_lands_in_the_first_bucket_whose_bound_is_not_below_it() -> None:
    h = Histogram()
    for v in (0.0, 0.00005, 0.00006, 0.001, 59.0, 61.0):
        h.observe(v)
    cum = h.cumulative()
    assert cum[BOUNDS.index(0.00005)] == 2  # 0 and exactly the bound (le)
    assert cum[BOUNDS.index(0.0001)] == 3
    assert cum[BOUNDS.index(0.001)] == 4
    assert cum[BOUNDS.index(60.0)] == 5 and cum[-1] == 6 == h.count
    assert h.total == pytest.approx(0.00005 + 0.00006 + 0.001 + 59 + 61)


def test_bucket_is_bisect_left_over_the_bounds() -> None:
    values = [0.0, -1.0, float("inf"), 1e-9, *BOUNDS]
    values += [b * f for b in BOUNDS for f in (0.999999, 1.000001, 0.5, 1.5)]
    values += [i * 1e-5 for i in range(10_000)] + [i * 0.01 for i in range(10_000)]
    assert [bucket(v) for v in values] == [bisect_left(BOUNDS, v) for v in values]
    assert bucket(float("nan")) == len(BOUNDS)  # +Inf: never lost


def test_observe_counts_in_the_bucket_that_bucket_names() -> None:
    """Histogram.observe writes its compares out again (C integer fields, one per bucket): the same
    buckets as `bucket`, for every bound, both sides of it, NaN and the infinities."""
    values = [0.0, -1.0, float("inf"), float("-inf"), float("nan"), 1e-9, *BOUNDS]
    values += [b * f for b in BOUNDS for f in (0.999999, 1.000001, 0.5, 1.5)]
    values += [i * 1e-5 for i in range(3_000)] + [i * 0.03 for i in range(3_000)]
    h = Histogram()
    want = [0] * (len(BOUNDS) + 1)
    for v in values:
        one = Histogram()
        one.observe(v)
        assert one.counts == [int(i == bucket(v)) for i in range(len(BOUNDS) + 1)], v
        h.observe(v)
        want[bucket(v)] += 1
    assert h.counts == want and h.count == len(values)
    c = h.copy()
    c.merge(h)
    assert c.counts == [2 * n for n in want] and c.cumulative()[-1] == 2 * len(values)


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    counts = [0] * (len(BOUNDS) + 1)
    i = BOUNDS.index(0.01)
    counts[i] = 100  # everything between 5 ms and 10 ms
    assert quantile(counts, 0.5) == pytest.approx(0.0075)
    assert quantile(counts, 0.99) == pytest.approx(0.00995)
    assert quantile([0] * len(counts), 0.5) is None
    counts[-1] = 1000  # past the last bound: the last bound
    assert quantile(counts, 0.99) == BOUNDS[-1]


def test_close_reasons_become_few_labels() -> None:
    assert reason_kind("server login failed: password authentication failed for user \"x\"") == "server login failed"
    assert reason_kind("pgmux cannot connect to server 10.0.0.5:5432: timeout") == "pgmux cannot connect to server"
    assert reason_kind("server error 57P01: terminating connection") == "server error"
    ev = Events()

    class S:
        class pool:  # noqa: N801 - a stand-in with the one attribute read
            database = "db"

    for n in range(MAX_KINDS + 10):
        ev.server_closed(S, f"reason{'x' * n}")
    assert len(ev.servers_closed) == MAX_KINDS + 1 and ev.servers_closed[("db", "other")] == 10


def test_metrics_listen_parser() -> None:
    assert listen_address("127.0.0.1:9127") == "127.0.0.1:9127" and listen_address("") is None
    assert split_listen("[::1]:80") == ("::1", 80) and split_listen("*:9") == ("*", 9)
    for bad in ("9127", "::1:80", "host:0", "host:x", ":80"):
        with pytest.raises(ValueError):
            listen_address(bad)


def test_history_is_a_bounded_ring() -> None:
    class App:
        registry: list[object] = []

    h = History(period=1.0, window=10.0)
    for t in range(100):
        h.tick(App, float(t), 1000.0 + t)
    assert len(h.points) == 10 and h.series()["t"][-1] == 1099.0
    cols = h.series()  # kept as C doubles (pooling/ring.py), read back as they were made
    assert cols["t"] == [1090.0 + i for i in range(10)] and cols["wait_p50"][-1] is None
    assert cols["sv_total"][-1] == 0 and type(cols["sv_total"][-1]) is int
