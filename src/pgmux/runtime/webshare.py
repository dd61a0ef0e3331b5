"""metrics_listen with worker processes (issue 15): one endpoint for the whole pooler.

The supervisor binds metrics_listen with the pooler's other listening sockets (net/http.bind) and every
worker accepts on its own copy of it, so a scrape lands on whichever worker the kernel picks. That worker
answers with the pooler's numbers: it asks every other live worker (`WorkerShare.live()`) for its own,
over the worker's private HTTP socket (`<rundir>/w<i>/metrics`, mode 0600 in the supervisor's 0700
directory; the same small HTTP listener, net/http.py, serving only `/local/metrics` and `/local/status`),
and merges them with its own: metric families by metrics/merge.py, /status.json by metrics/status.merge
(the history charts per wall-clock slot, metrics/history.merge).

A worker that does not answer within `PEER_TIMEOUT` (stopped, restarting, or dead with its socket file
left) is left out: the scrape answers with the others' numbers, `pgmux_workers_missing` counts the
absent and `pgmux_worker_up{worker}` names them, the status page says so, and the log has a WARNING once
until that worker answers again. Its counters and histograms are not left out: each worker writes down
what it shows of them before it shows them (`<rundir>/w<i>/metrics.counters.json`), the file stands in
for a worker that does not answer, and a restarted worker carries its predecessor's on in its own, so the
pooler's counters never go down (Prometheus would read that as a reset). Nothing here runs except when
a scrape or a page asks. The answer's `X-Pgmux-Worker` header names the worker that merged it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Final

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from pgmux.metrics import status
from pgmux.metrics.merge import Family, from_data, merge_families, monotonic, to_data, worker_families

log = logging.getLogger("pgmux")

PEER_TIMEOUT: Final = 2.0  # seconds a worker has to answer another's request for its numbers
MAX_REPLY: Final = 64 << 20  # bytes: a bound on one worker's answer
JSON: Final = {"Content-Type": "application/json"}


def private_path(rundir: str, index: int) -> str:
    from pgmux.runtime.workershare import private_dir

    return os.path.join(private_dir(rundir, index), "metrics")


def counters_path(rundir: str, index: int) -> str:
    """Worker `index`'s counters and histograms as it last showed them (see `Peers.local_metrics`)."""
    return private_path(rundir, index) + ".counters.json"


def read_counters(path: str) -> list[Family]:
    """A worker's last shown counters and histograms; [] when there are none (or the file is unreadable)."""
    try:
        with open(path, "rb") as f:
            return monotonic(from_data(json.loads(f.read())))
    except (OSError, ValueError):
        return []


def write_counters(path: str, families: list[Family]) -> None:
    """Replaced whole (rename): a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(families, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("metrics: cannot keep this worker's counters in %s: %s", path, e)


class _Fixed(Collector):
    """Families already merged, for prometheus-client's encoders."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        out = []
        for name, typ, doc, samples in self.families:
            m = Metric(name, doc, typ)
            m.samples = [Sample(s, labels, v) for s, labels, v in samples]
            out.append(m)
        return out


def render(families: list[Family], accept: str) -> tuple[int, dict[str, str], bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    encoder, content_type = choose_encoder(accept)
    return 200, {"Content-Type": content_type}, encoder(registry)


class Peers:
    """A worker's side of the one endpoint: its private listener, and the asking and merging."""

    def __init__(self, web: Any, share: Any) -> None:
        self.web = web
        self.share = share
        self.private: Any = None
        self.silent: set[int] = set()  # workers whose absence was logged (once, until they answer)
        # the counters and histograms this worker's predecessors showed, carried on in its own (none for
        # the first worker of its index)
        self.carried: list[Family] = []

    async def start(self) -> None:
        from pgmux.net.http import HttpServer

        self.carried = read_counters(counters_path(self.share.rundir, self.share.index))
        self.private = HttpServer(self.handle_private)
        await self.private.start_unix(private_path(self.share.rundir, self.share.index))

    def close(self) -> None:
        if self.private is not None:
            self.private.close()
            self.private = None

    # -- this worker's numbers, for the one that asks ------------------------------------------------
    def local_metrics(self) -> list[Family]:
        """This worker's families, its predecessors' counters and histograms added. Their counters and
        histograms are written down before they are shown: a pooler's counter must never go down (Prometheus
        reads a decrease as a reset and counts the whole value again), and when this worker is missing from
        a scrape or dead, what it showed last stands in for it, and its successor carries it on."""
        fams = to_data(self.web.registry.collect())
        if self.carried:
            fams = merge_families([fams, self.carried])
        write_counters(counters_path(self.share.rundir, self.share.index), monotonic(fams))
        return fams

    def handle_private(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if path == "/local/metrics":
            return 200, JSON, json.dumps(self.local_metrics(), separators=(",", ":")).encode()
        if path == "/local/status":
            body = json.dumps(status.local(self.web.app, self.web.history), separators=(",", ":"))
            return 200, JSON, body.encode()
        return 404, {"Content-Type": "text/plain"}, b"not found\n"

    # -- the pooler's ------------------------------------------------------------------------------------
    async def metrics(self, accept: str) -> tuple[int, dict[str, str], bytes]:
        mine = self.local_metrics()  # before asking: the numbers of one moment, as near as can be
        answered = await self._gather("/local/metrics", mine, from_data)
        # every row's counters: those of a process that did not answer, or that is gone (dead, or retired in
        # a rolling restart, its row empty now), from the file it left
        rows = sorted(set(answered) | set(range(getattr(self.share, "rows", self.share.workers))))
        parts = [answered[i] if i in answered else read_counters(counters_path(self.share.rundir, i)) for i in rows]
        merged = merge_families(parts)
        status_, headers, body = render(merged + worker_families(self.share.workers, answered), accept)
        return status_, {**headers, "X-Pgmux-Worker": str(self.share.index)}, body

    async def status(self) -> tuple[int, dict[str, str], bytes]:
        mine = status.local(self.web.app, self.web.history)
        answered = await self._gather("/local/status", mine, _status_part)
        doc = status.merge(sorted(answered.items()), self.share.workers)
        return 200, {**JSON, "X-Pgmux-Worker": str(self.share.index)}, json.dumps(doc, separators=(",", ":")).encode()

    async def _gather(self, path: str, mine: Any, parse: Any) -> dict[int, Any]:
        share = self.share
        others = [i for i in share.live() if i != share.index]
        replies = await asyncio.gather(*(self._ask(i, path) for i in others), return_exceptions=True)
        out: dict[int, Any] = {share.index: mine}
        for i, reply in zip(others, replies, strict=True):
            if not isinstance(reply, BaseException):
                try:
                    out[i] = parse(reply)
                except ValueError as e:
                    reply = e
            if isinstance(reply, BaseException):
                if i not in self.silent:
                    self.silent.add(i)
                    why = "no answer" if isinstance(reply, TimeoutError) else f"{type(reply).__name__}: {reply}"
                    log.warning("metrics: worker %d did not answer within %gs (%s); /metrics and the status page "
                                "show the other workers' numbers (pgmux_workers_missing)", i, PEER_TIMEOUT, why)
            elif i in self.silent:
                self.silent.discard(i)
                log.info("metrics: worker %d answers again", i)
        return out

    async def _ask(self, index: int, path: str) -> Any:
        return await asyncio.wait_for(fetch(private_path(self.share.rundir, index), path), PEER_TIMEOUT)


async def fetch(socket_path: str, path: str) -> Any:
    """GET `path` from a worker's private listener; the JSON body. OSError or ValueError when it fails."""
    reader, writer = await asyncio.open_unix_connection(socket_path, limit=1 << 20)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: pgmux\r\n\r\n".encode())
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY:
                raise ValueError("reply too large")
    finally:
        writer.close()
    data = b"".join(chunks)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200 "):
        raise ValueError(f"bad reply: {head[:80]!r}")
    return json.loads(body)


def _status_part(raw: Any) -> dict[str, Any]:
    keys = ("uptime", "pools", "hosts", "pinned", "pinned_by_reason", "advice", "history")
    if not isinstance(raw, dict) or any(k not in raw for k in keys):
        raise ValueError("not a worker's status")
    return raw
