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
"""

from __future__ import annotations

import json
import logging
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
from pgmux.net.http import HttpServer

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

    async def start(self) -> None:
        """At start-up: bind metrics_listen if set (OSError stops start-up), and follow reloads."""
        self.app.reload_hooks.append(self._reloaded)
        self.app.tick_hooks.append(self._tick)
        await self._move(self.app.config.settings.metrics_listen)

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

    # -- HTTP ------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            return 200, {"Content-Type": content_type}, encoder(self.registry)
        if path == "/status.json":
            body = json.dumps(snapshot(self.app, self.history), separators=(",", ":")).encode()
            return 200, {"Content-Type": "application/json"}, body
        if path in ("/", "/index.html"):
            return 200, {"Content-Type": "text/html; charset=utf-8"}, PAGE
        return 404, {"Content-Type": "text/plain"}, b"not found: try /metrics or /\n"
