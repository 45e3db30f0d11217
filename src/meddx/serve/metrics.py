"""Request metrics in the Prometheus text format (written by hand: no client library needed).

Counts by route and status, a latency histogram per route, the requests admitted and not yet answered (the
bounded queue's depth), images waiting for a micro-batch, and batch sizes.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.in_flight = 0
        self.rejected_full = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            row = self.buckets[route]
            for i, edge in enumerate(BUCKETS):
                if seconds <= edge:
                    row[i] += 1
            self.sums[route] += seconds
            self.counts[route] += 1

    def render(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> str:
        """The exposition text; ``gauges``: extra ``name -> (help, value function)``."""
        with self._lock:
            lines = ["# HELP meddx_http_requests_total HTTP requests by method, route and status code.",
                     "# TYPE meddx_http_requests_total counter"]
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'meddx_http_requests_total{{method="{method}",route="{_esc(route)}",'
                             f'status="{status}"}} {n}')
            lines += ["# HELP meddx_http_request_duration_seconds Time from request to response.",
                      "# TYPE meddx_http_request_duration_seconds histogram"]
            for route in sorted(self.counts):
                r = _esc(route)
                for edge, n in zip(BUCKETS, self.buckets[route]):
                    lines.append(f'meddx_http_request_duration_seconds_bucket{{route="{r}",le="{edge:g}"}} {n}')
                lines.append(f'meddx_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} '
                             f"{self.counts[route]}")
                lines.append(f'meddx_http_request_duration_seconds_sum{{route="{r}"}} {self.sums[route]:.6f}')
                lines.append(f'meddx_http_request_duration_seconds_count{{route="{r}"}} {self.counts[route]}')
            base = {"meddx_queue_depth": ("Prediction requests admitted and not yet answered.", lambda: self.in_flight),
                    "meddx_rejected_queue_full_total": ("Requests refused with 503 because the queue was full.",
                                                        lambda: self.rejected_full)}
        for name, (text, value) in (base | (gauges or {})).items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value():g}"]
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
