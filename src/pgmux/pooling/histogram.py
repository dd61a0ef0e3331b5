"""Fixed-bucket histograms of the per-transaction times (client wait, transaction, query), one set per pool.

They are updated on the per-transaction path, so an observation is a few float compares with constants
(`bucket`), one integer add into a preallocated list and one float add: no allocation, no lock, nothing
from a metrics library. The exposition (pgmux/metrics/) reads them at scrape time, cumulates the buckets and
turns them into Prometheus histograms. A pool carries a `Timings` only while metrics_listen is set
(`Registry.timings`), so with metrics off the hot path pays one `is None` test.

The sums add the same differences of clock readings as PoolStats' xact_secs/query_secs/wait_secs, in the
same order, so a histogram's sum equals the SHOW STATS total for a pool that had it from its creation.
"""

from __future__ import annotations

# Upper bounds in seconds (Prometheus `le`): 50 us to 60 s, roughly 1-2.5-5 per decade. The last
# bucket (+Inf) is implicit: index len(BOUNDS).
BOUNDS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


def bucket(secs: float) -> int:
    """The index of the first bound >= secs (`bisect_left(BOUNDS, secs)`; a value equal to a bound counts
    in that bucket, as Prometheus' `le` says), written out as comparisons with constants: compiled, that is
    five float compares, where a call of bisect_left costs some 900 instructions (valgrind). A unit test
    holds the two equal; change both with BOUNDS."""
    if secs <= 0.005:
        if secs <= 0.00025:
            if secs <= 0.00005:
                return 0
            return 1 if secs <= 0.0001 else 2
        if secs <= 0.001:
            return 3 if secs <= 0.0005 else 4
        return 5 if secs <= 0.0025 else 6
    if secs <= 0.5:
        if secs <= 0.05:
            if secs <= 0.01:
                return 7
            return 8 if secs <= 0.025 else 9
        if secs <= 0.1:
            return 10
        return 11 if secs <= 0.25 else 12
    if secs <= 5.0:
        if secs <= 1.0:
            return 13
        return 14 if secs <= 2.5 else 15
    if secs <= 10.0:
        return 16
    if secs <= 30.0:
        return 17
    return 18 if secs <= 60.0 else 19


class Histogram:
    """Per-bucket counts in 20 int fields, not a list: compiled, a field is a C integer, so an observation
    is the compares and one add in place, where a list item above 256 was a new int object per
    observation (about 300 instructions of the 900 the three histograms cost a transaction, valgrind)."""

    __slots__ = ("c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12", "c13", "c14",
                 "c15", "c16", "c17", "c18", "c19", "total")

    def __init__(self) -> None:
        self.c0 = self.c1 = self.c2 = self.c3 = self.c4 = self.c5 = self.c6 = self.c7 = self.c8 = self.c9 = 0
        self.c10 = self.c11 = self.c12 = self.c13 = self.c14 = self.c15 = self.c16 = self.c17 = self.c18 = 0
        self.c19 = 0
        self.total = 0.0  # seconds

    def observe(self, secs: float) -> None:
        """counts[bucket(secs)] += 1, the same compares as `bucket` (a unit test holds the two equal)."""
        self.total += secs
        if secs <= 0.005:
            if secs <= 0.00025:
                if secs <= 0.00005:
                    self.c0 += 1
                elif secs <= 0.0001:
                    self.c1 += 1
                else:
                    self.c2 += 1
            elif secs <= 0.001:
                if secs <= 0.0005:
                    self.c3 += 1
                else:
                    self.c4 += 1
            elif secs <= 0.0025:
                self.c5 += 1
            else:
                self.c6 += 1
        elif secs <= 0.5:
            if secs <= 0.05:
                if secs <= 0.01:
                    self.c7 += 1
                elif secs <= 0.025:
                    self.c8 += 1
                else:
                    self.c9 += 1
            elif secs <= 0.1:
                self.c10 += 1
            elif secs <= 0.25:
                self.c11 += 1
            else:
                self.c12 += 1
        elif secs <= 5.0:
            if secs <= 1.0:
                self.c13 += 1
            elif secs <= 2.5:
                self.c14 += 1
            else:
                self.c15 += 1
        elif secs <= 10.0:
            self.c16 += 1
        elif secs <= 30.0:
            self.c17 += 1
        elif secs <= 60.0:
            self.c18 += 1
        else:
            self.c19 += 1

    @property
    def counts(self) -> list[int]:
        """Per-bucket counts, the last one +Inf's (a new list: read at scrape time)."""
        return [self.c0, self.c1, self.c2, self.c3, self.c4, self.c5, self.c6, self.c7, self.c8, self.c9, self.c10,
                self.c11, self.c12, self.c13, self.c14, self.c15, self.c16, self.c17, self.c18, self.c19]

    def set_counts(self, counts: list[int]) -> None:
        (self.c0, self.c1, self.c2, self.c3, self.c4, self.c5, self.c6, self.c7, self.c8, self.c9, self.c10, self.c11,
         self.c12, self.c13, self.c14, self.c15, self.c16, self.c17, self.c18, self.c19) = counts

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Counts at or below each bound, then the total (+Inf), as Prometheus buckets are."""
        out, acc = [], 0
        for n in self.counts:
            acc += n
            out.append(acc)
        return out

    def merge(self, other: Histogram) -> None:
        self.set_counts([a + b for a, b in zip(self.counts, other.counts, strict=True)])
        self.total += other.total

    def copy(self) -> Histogram:
        h = Histogram()
        h.set_counts(self.counts)
        h.total = self.total
        return h


def quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of per-bucket counts (not cumulative), interpolated linearly inside its
    bucket as Prometheus' histogram_quantile does; None without observations. Past the last bound the
    answer is that bound (the +Inf bucket has no width)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    acc = 0
    for i, n in enumerate(counts):
        if n and acc + n >= rank:
            if i >= len(BOUNDS):
                return BOUNDS[-1]
            lo = BOUNDS[i - 1] if i > 0 else 0.0
            return lo + (BOUNDS[i] - lo) * max(rank - acc, 0.0) / n
        acc += n
    return BOUNDS[-1]


class Timings:
    """The three per-transaction histograms of one pool."""

    __slots__ = ("wait", "xact", "query")

    def __init__(self) -> None:
        self.wait = Histogram()  # from asking for a server to getting one (0 when one was idle)
        self.xact = Histogram()  # a transaction's time on its server
        self.query = Histogram()  # a query's time on its server, up to its ReadyForQuery
