"""The admin port of ``fastactor serve``: health checks and Prometheus metrics, answered by
the supervisor. For /metrics it asks each worker for its counters over the worker's call
socket (ipc.ask_stats), so a scrape sees every request answered before it; a worker that
does not answer within STATS_TIMEOUT (busy in a long synchronous call, or restarting) is
shown with the counters it last gave."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .._version import __version__
from .ipc import ask_stats
from .worker import socket_path

__all__ = ["render_metrics", "start_admin"]

STATS_TIMEOUT = 0.5  # seconds a worker has to answer a scrape

_COUNTERS = [
    ("requests", "fastactor_http_requests_total", "HTTP requests received"),
    ("turns", "fastactor_turns_total", "actor turns run"),
    ("commits", "fastactor_commits_total", "turns that wrote (one log record each)"),
    ("activations", "fastactor_activations_total", "instances activated"),
    ("evictions", "fastactor_evictions_total", "instances evicted (idle, or past --max-resident)"),
    ("checkpoints", "fastactor_checkpoints_total", "snapshots written"),
    ("alarms_run", "fastactor_alarms_run_total", "alarm handlers that succeeded"),
    ("alarm_retries", "fastactor_alarm_retries_total", "failed alarm runs retried"),
    ("alarms_given_up", "fastactor_alarms_given_up_total", "alarms deleted after retries"),
    (
        "turns_left_behind",
        "fastactor_turns_left_behind_total",
        "turns whose task went on long after it was cancelled (their instance started afresh)",
    ),
]

_CHANNEL = [
    (
        "calls_out",
        "fastactor_forwarded_calls_total",
        "calls sent to the worker owning their instance",
    ),
    ("calls_in", "fastactor_served_calls_total", "calls run here for other workers"),
    ("frames_out", "fastactor_channel_frames_total", "calls and replies sent to other workers"),
    ("writes_out", "fastactor_channel_writes_total", "socket writes carrying those frames"),
]


def render_metrics(
    stats: list[dict[str, Any] | None], restarts: list[int], stalls: list[float]
) -> str:
    """The /metrics text: each worker's counters (STATS, None for one that never answered),
    and the supervisor's own per worker: RESTARTS, and STALLS (seconds since its event loop
    last ran, see watchdog.py)."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    def histogram(name: str, labels: str, buckets: list[Any], total: float, unit: float) -> None:
        """NAME's lines for one series: BUCKETS are (upper bound or "inf", count in that
        bucket alone), bounds and TOTAL in seconds times UNIT."""
        acc = 0
        for bound, count in buckets:
            acc += count
            le = "+Inf" if bound == "inf" else f"{float(bound) / unit:g}"
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {acc}')
        out.append(f"{name}_sum{{{labels}}} {total / unit:g}")
        out.append(f"{name}_count{{{labels}}} {acc}")

    live = [(i, s) for i, s in enumerate(stats) if s is not None]
    for key, name, help_ in _COUNTERS:
        family(name, "counter", help_)
        out.extend(f'{name}{{worker="{i}"}} {s.get(key, 0)}' for i, s in live)
    family("fastactor_instances_resident", "gauge", "instances in memory")
    out.extend(f'fastactor_instances_resident{{worker="{i}"}} {s["resident"]}' for i, s in live)
    family(
        "fastactor_cache_bytes",
        "gauge",
        "memory resident instances' caches of stored values hold, see --max-cache-memory",
    )
    out.extend(f'fastactor_cache_bytes{{worker="{i}"}} {s.get("cache_bytes", 0)}' for i, s in live)
    family("fastactor_alarms_pending", "gauge", "alarms set and not yet run")
    out.extend(f'fastactor_alarms_pending{{worker="{i}"}} {s["alarms_pending"]}' for i, s in live)
    family("fastactor_http_connections", "gauge", "open HTTP connections")
    out.extend(f'fastactor_http_connections{{worker="{i}"}} {s["connections"]}' for i, s in live)
    family(
        "fastactor_http_body_bytes",
        "gauge",
        "request body bytes held (being read, queued, running) and heads still arriving; "
        "see --max-body-memory",
    )
    out.extend(
        f'fastactor_http_body_bytes{{worker="{i}"}} {s.get("body_bytes", 0)}' for i, s in live
    )
    family("fastactor_commit_batches_total", "counter", "log write + fdatasync rounds")
    out.extend(
        f'fastactor_commit_batches_total{{worker="{i}"}} {s["wal"]["batches"]}' for i, s in live
    )
    family("fastactor_log_bytes_total", "counter", "bytes appended to the log")
    out.extend(f'fastactor_log_bytes_total{{worker="{i}"}} {s["wal"]["bytes"]}' for i, s in live)
    family("fastactor_fsync_seconds", "histogram", "latency of one log write + fdatasync")
    for i, s in live:
        wal = s["wal"]
        histogram(
            "fastactor_fsync_seconds", f'worker="{i}"', wal["flush_us"], wal["flush_us_sum"], 1e6
        )
    family(
        "fastactor_http_responses_total", "counter", "final HTTP responses sent, by status class"
    )
    for i, s in live:
        for fn, st in s.get("http", {}).items():
            out.extend(
                f'fastactor_http_responses_total{{worker="{i}",function="{fn}",code="{code}"}} {n}'
                for code, n in st["responses"].items()
            )
    family(
        "fastactor_http_request_duration_seconds",
        "histogram",
        "from a request's fetch starting to its response handed to the socket",
    )
    for i, s in live:
        for fn, st in s.get("http", {}).items():
            labels = f'worker="{i}",function="{fn}"'
            name = "fastactor_http_request_duration_seconds"
            histogram(name, labels, st["duration"], st["duration_sum"], 1.0)
    for key, name, help_ in _CHANNEL:
        family(name, "counter", help_)
        out.extend(f'{name}{{worker="{i}"}} {s.get("channel", {}).get(key, 0)}' for i, s in live)
    family("fastactor_worker_restarts_total", "counter", "times the supervisor restarted it")
    out.extend(
        f'fastactor_worker_restarts_total{{worker="{i}"}} {n}' for i, n in enumerate(restarts)
    )
    family("fastactor_event_loop_stall_seconds", "gauge", "seconds since its event loop last ran")
    out.extend(
        f'fastactor_event_loop_stall_seconds{{worker="{i}"}} {t:.2f}' for i, t in enumerate(stalls)
    )
    return "\n".join(out) + "\n"


def start_admin(sup: Any, host: str, port: int) -> ThreadingHTTPServer:
    last: dict[int, dict[str, Any]] = {}

    def read(i: int) -> dict[str, Any] | None:
        try:
            last[i] = ask_stats(socket_path(sup.cfg["sockets"], i), STATS_TIMEOUT)
        except (OSError, ValueError):
            pass  # not answering now: what it last said, if it ever did
        return last.get(i)

    class Handler(BaseHTTPRequestHandler):
        server_version = f"fastactor/{__version__}"
        default_request_version = "HTTP/1.0"  # a bad request line still gets a status line
        timeout = 10  # a client that stops sending loses its thread after 10 s

        def do_GET(self, head: bool = False) -> None:  # noqa: N802 (the http.server name)
            path = self.path.split("?", 1)[0]
            if path == "/health/liveness":
                self._send(200, "text/plain", b"ok\n", head)
            elif path == "/health/readiness":
                why = sup.unready()
                body = f"{why or 'ready'}\n".encode()
                self._send(503 if why else 200, "text/plain", body, head)
            elif path == "/metrics":
                stats = [read(i) for i in range(sup.cfg["workers"])]
                body = render_metrics(stats, sup.restarts, sup.stalls).encode()
                self._send(200, "text/plain; version=0.0.4", body, head)
            else:
                self._send(404, "text/plain", b"not found\n", head)

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET(head=True)

        def _refuse_method(self) -> None:
            body = b"method not allowed: GET or HEAD\n"
            self._send(405, "text/plain", body, False, (("allow", "GET, HEAD"),))

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """Malformed requests and unknown methods: a short text answer, not HTML."""
            self.close_connection = True
            text = f"{message or self.responses.get(code, ('error',))[0]}\n".encode(
                "latin-1", "replace"
            )
            self._send(code, "text/plain", text, getattr(self, "command", None) == "HEAD")

        def _send(
            self,
            status: int,
            ctype: str,
            body: bytes,
            head: bool,
            extra: tuple[tuple[str, str], ...] = (),
        ) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def version_string(self) -> str:
            return self.server_version  # not http.server's "fastactor/V Python/3.x"

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="fastactor-admin").start()
    return server
