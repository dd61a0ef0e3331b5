"""Scraping pgmux's metrics listener in tests: the HTTP GET, and the exposition parsed into samples."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pgmux.testing.cluster import HOST, free_port


def metrics_settings(**extra: Any) -> dict[str, Any]:
    return {"pool_mode": "transaction", "metrics_listen": f"{HOST}:{free_port()}", **extra}


def url(mux: Any, path: str = "/metrics") -> str:
    return f"http://{mux.settings['metrics_listen']}{path}"


def get(mux: Any, path: str = "/metrics", accept: str | None = None, timeout: float = 10) -> tuple[int, str, str]:
    req = urllib.request.Request(url(mux, path), headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(mux: Any) -> Samples:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    _, _, text = get(mux)
    return samples(text)


def samples(text: str) -> Samples:
    """The samples of a /metrics text: (name, sorted labels) -> value (each series once)."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(samples: Samples, name: str, /, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not scraped; have {sorted(k for k in samples if k[0] == name)[:10]}"
    return samples[key]


def raw(mux: Any, request: bytes, timeout: float = 10) -> bytes:
    host, port = mux.settings["metrics_listen"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
