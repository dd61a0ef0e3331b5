"""metrics_listen wired to the App: the HTTP listener (net/http.py) on pgmux's event loop, serving

    /metrics       Prometheus text format 0.0.4, or OpenMetrics when the Accept header asks for it
    /              the status page (metrics/page.py), which fetches
    /status.json   its data (metrics/status.py)

The exposition uses prometheus-client with two custom collectors (metrics/exporter.py, metrics/own.py)
that read pgmux's state when scraped; the library's own metric objects are never touched per query.
While the listener is on, every pool keeps histograms (pooling/histogram.py, `Registry.set_timings`).

A reload or SET that changes metrics_listen moves the listener: the new address is bound first, and only
then the old one closed, so a new address that cannot be bound leaves the old one serving (with an
ERROR in the log naming why). At start-up a listener that cannot be bound stops pgmux, as listen_addr does.

With worker processes (runtime/webshare.py) the supervisor binds metrics_listen at start (`bind_metrics`)
and each worker accepts on a copy; the worker that takes a request answers for the whole pooler. There a
reload or SET that changes metrics_listen is logged as taking effect at the next start (the supervisor
cannot hand the running workers a new socket), and the listener stays where it is.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from pgmux.config.values import split_listen
from pgmux.metrics.exporter import PgBouncerCollector
from pgmux.metrics.history import History
from pgmux.metrics.own import PgmuxCollector
from pgmux.metrics.page import PAGE
from pgmux.metrics.status import snapshot
from pgmux.net.http import HttpServer, bind
from pgmux.net.listen import copy

log = logging.getLogger("pgmux")


class Web:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.address: str | None = None
        self.http: HttpServer | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PgBouncerCollector(app))
        self.registry.register(PgmuxCollector(app))
        self.history = History()
        self.peers: Any = None  # with worker processes: runtime/webshare.Peers

    async def start(self, inherited: list[socket.socket] | None = None) -> None:
        """At start-up: bind metrics_listen if set (OSError stops start-up), and follow reloads.
        `inherited`: the listening sockets of the pgmux `-R` took over (runtime/takeover.py)."""
        self.app.reload_hooks.append(self._reloaded)
        self.app.tick_hooks.append(self._tick)
        share = getattr(self.app, "share", None)
        if share is not None:
            await self._start_worker(share)
            return
        address = self.app.config.settings.metrics_listen
        if inherited and address:
            http = HttpServer(self.handle)
            await http.start_sockets(inherited)
            self.http, self.address = http, address
            self.app.registry.set_timings(True)
            log.info("metrics and status page on http://%s/ (taken over)", address)
            return
        for sock in inherited or []:
            sock.close()
        await self._move(address)

    def given(self) -> None:
        """`pgmux -R` took metrics_listen over with the other sockets: this process no longer serves it."""
        if self.http is not None:
            self.http.close()
        self.http, self.address = None, None

    async def _start_worker(self, share: Any) -> None:
        """A worker: serve the copy of what the supervisor bound at start, and answer the other workers."""
        from pgmux.runtime.webshare import Peers

        bound = share.metrics
        if bound is None:
            self._not_moved(self.app.config.settings.metrics_listen)
            return
        address, socks = bound
        http = HttpServer(self.handle)
        await http.start_sockets([copy(sock) for sock in socks])
        peers = Peers(self, share)
        try:
            await peers.start()
        except BaseException:
            http.close()
            raise
        self.http, self.peers, self.address = http, peers, address
        self.app.registry.set_timings(True)
        if share.slot == 0:
            log.info("metrics and status page on http://%s/ (every worker answers for the whole pooler)", address)
        self._not_moved(self.app.config.settings.metrics_listen)

    def _not_moved(self, address: str | None) -> None:
        if address != self.address:
            log.warning("metrics_listen = %s: with workers the supervisor binds metrics_listen when pgmux starts; "
                        "this takes effect at the next start (now serving on %s)", address or "(empty)",
                        self.address or "nothing")

    async def _move(self, address: str | None) -> None:
        old = self.http
        if address is None:
            new = None
        else:
            host, port = split_listen(address)
            new = HttpServer(self.handle)
            await new.start(host, port)  # OSError: the caller says why
            log.info("metrics and status page on http://%s/", address)
        if old is not None:
            old.close()
        self.http, self.address = new, address
        self.app.registry.set_timings(new is not None)

    def _reloaded(self) -> None:
        address = self.app.config.settings.metrics_listen
        if address != self.address:
            if getattr(self.app, "share", None) is not None:
                self._not_moved(address)
            else:
                self.app.spawn(self._move_logged, address)

    async def _move_logged(self, address: str | None) -> None:
        try:
            await self._move(address)
        except OSError as e:
            log.error("metrics_listen = %s: cannot listen (%s); still serving on %s", address, e.strerror or e,
                      self.address or "nothing")
        else:
            if address is None:
                log.info("metrics listener closed (metrics_listen is empty)")

    def _tick(self) -> None:
        if self.http is not None:
            self.history.tick(self.app, self.app.now(), time.time())

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.peers is not None:
            self.peers.close()
            self.peers = None

    # -- HTTP ------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict[str, str]) -> Any:
        """The answer, or with workers an awaitable of the pooler's (runtime/webshare.py)."""
        if path == "/metrics":
            if self.peers is not None:
                return self.peers.metrics(headers.get("accept", ""))
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            return 200, {"Content-Type": content_type}, encoder(self.registry)
        if path == "/status.json":
            if self.peers is not None:
                return self.peers.status()
            body = json.dumps(snapshot(self.app, self.history), separators=(",", ":")).encode()
            return 200, {"Content-Type": "application/json"}, body
        if path in ("/", "/index.html"):
            return 200, {"Content-Type": "text/html; charset=utf-8"}, PAGE
        return 404, {"Content-Type": "text/plain"}, b"not found: try /metrics or /\n"


def bind_metrics(settings: Any) -> tuple[str, list[socket.socket]] | None:
    """metrics_listen bound and listening, for worker processes to inherit (runtime/supervisor.py); None
    when it is empty. OSError when it cannot be bound (start-up stops)."""
    address = settings.metrics_listen
    if not address:
        return None
    host, port = split_listen(address)
    try:
        return address, bind(host, port)
    except OSError as e:
        raise OSError(e.errno, f"metrics_listen = {address}: {e.strerror or e}") from None
