"""Request counts and latencies for `/metrics`, in Prometheus' text format."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

QUANTILES = (0.5, 0.95, 0.99)


class Metrics:
    def __init__(self, routes: set[str], window: int = 2048) -> None:
        self.routes = routes
        self.window = window
        self.started = time.time()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency_sum: Counter[str] = Counter()
        self.latency_count: Counter[str] = Counter()
        self.recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def route(self, path: str) -> str:
        # a fixed label set: scanners hitting random paths must not grow the metrics
        return path if path in self.routes else "other"

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        route = self.route(path)
        with self._lock:
            self.requests[(route, method, status)] += 1
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1
            self.recent.setdefault(route, deque(maxlen=self.window)).append(seconds)

    def render(self, gauges: dict[str, float]) -> str:
        out = [
            "# HELP convrec_requests_total HTTP requests by route, method and status.",
            "# TYPE convrec_requests_total counter",
        ]
        with self._lock:
            for (route, method, status), n in sorted(self.requests.items()):
                out.append(f'convrec_requests_total{{route="{route}",method="{method}",status="{status}"}} {n}')
            out += [
                "# HELP convrec_request_duration_seconds Request latency (quantiles over the last "
                f"{self.window} requests of each route).",
                "# TYPE convrec_request_duration_seconds summary",
            ]
            for route in sorted(self.latency_count):
                values = sorted(self.recent[route])
                for q in QUANTILES:
                    v = values[min(len(values) - 1, int(q * len(values)))]
                    out.append(f'convrec_request_duration_seconds{{route="{route}",quantile="{q}"}} {v:.6f}')
                out.append(f'convrec_request_duration_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
                out.append(f'convrec_request_duration_seconds_count{{route="{route}"}} {self.latency_count[route]}')
        for name, value in gauges.items():
            out.append(f"# TYPE convrec_{name} gauge")
            out.append(f"convrec_{name} {value:g}")
        return "\n".join(out) + "\n"
