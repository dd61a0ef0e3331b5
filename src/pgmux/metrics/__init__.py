"""Metrics and the status page (metrics_listen): counters kept as events happen (events.py), collectors that
read pgmux's own state at scrape time (exporter.py: PgBouncer exporter series; own.py: pgmux's), the
in-memory history behind the status page's charts (history.py) and the page itself (status.py, page.py).
The HTTP listener is net/http.py; runtime/web.py wires them to the App."""
