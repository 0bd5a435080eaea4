"""Counters and a latency histogram for the env server, rendered as Prometheus text.

Deliberately tiny: the server is single-threaded asyncio, so plain dict increments are
safe and cost well under a microsecond on the hot path. Label values that come from
clients (tool names) are bounded by the caller, never taken raw.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict

from contract.vocab import Vocabulary
from envs.reporting import records_cut


class CallStatus(Vocabulary):
    """The `status` label of a tool call besides the environment's own tool-error reasons (the
    SDK's `not_found`, `episode_finished`, ...) and `env_error` (`OrsReason.ENV_ERROR`)."""

    OK = "ok"
    """The tool answered without an error."""
    INPUT_VALIDATION = "input_validation"
    """The input was refused before or by the tool (the SDK's reason, also the server's when it
    cuts a call short)."""
    BUDGET_EXCEEDED = "budget_exceeded"
    """The call used more than its CPU budget and was stopped (budget.py): the server's fact."""


# Seconds. Tool calls on the local envs take well under a millisecond; the tail matters.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=False)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Histogram:
    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1


class ServerMetrics:
    """Everything `/metrics` reports; the server calls the `record_*` methods."""

    def __init__(self) -> None:
        self.sessions_open = 0
        self.sessions_created: dict[str, int] = defaultdict(int)  # env -> n
        self.sessions_reaped = 0
        self.sessions_deleted = 0
        self.sessions_over_budget = 0
        self.fair_waits = 0
        self.calls: dict[tuple[str, str, str], int] = defaultdict(int)  # (env, tool, status) -> n
        self.errors: dict[str, int] = defaultdict(int)  # reason -> n
        self.latency: dict[str, _Histogram] = {}  # env -> histogram
        self.connections_closed: Counter[str] = Counter()  # why -> n (connections.py)

    def record_call(self, env: str, tool: str, status: str, seconds: float) -> None:
        """One finished tool call; `status` is a CallStatus or an error reason."""
        self.calls[(env, tool, status)] += 1
        if status != CallStatus.OK:
            self.errors[status] += 1
        hist = self.latency.get(env)
        if hist is None:
            hist = self.latency[env] = _Histogram()
        hist.observe(seconds)

    def record_fair_wait(self) -> None:
        """A request that waited for its client's turn on the loop (fairness.py)."""
        self.fair_waits += 1

    def record_error(self, reason: str) -> None:
        """A request refused before any tool ran (bad JSON, unknown session, ...)."""
        self.errors[reason] += 1

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("ors_sessions_open", "gauge", "Sessions currently open in this process.")
        out.append(f"ors_sessions_open {self.sessions_open}")
        family("ors_sessions_created_total", "counter", "Sessions created, by environment.")
        for env, n in sorted(self.sessions_created.items()):
            out.append(f"ors_sessions_created_total{_labels(('env',), (env,))} {n}")
        family("ors_sessions_reaped_total", "counter", "Idle sessions removed by the reaper.")
        out.append(f"ors_sessions_reaped_total {self.sessions_reaped}")
        family("ors_sessions_deleted_total", "counter", "Sessions deleted by their client.")
        out.append(f"ors_sessions_deleted_total {self.sessions_deleted}")
        family(
            "ors_sessions_over_budget_total",
            "counter",
            "Sessions ended after too many of their calls were stopped at the CPU budget.",
        )
        out.append(f"ors_sessions_over_budget_total {self.sessions_over_budget}")
        family(
            "ors_fair_waits_total",
            "counter",
            "Requests that waited while clients that had used less of the loop were served.",
        )
        out.append(f"ors_fair_waits_total {self.fair_waits}")
        family("ors_tool_calls_total", "counter", "Tool calls, by environment, tool and outcome.")
        for (env, tool, status), n in sorted(self.calls.items()):
            out.append(
                f"ors_tool_calls_total{_labels(('env', 'tool', 'status'), (env, tool, status))} {n}"
            )
        family("ors_errors_total", "counter", "Refused requests and failed tool calls, by reason.")
        for reason, n in sorted(self.errors.items()):
            out.append(f"ors_errors_total{_labels(('reason',), (reason,))} {n}")
        family(
            "ors_call_records_cut_total",
            "counter",
            "Call records sessions keep for their checks, cut or dropped to bound memory.",
        )
        out.append(f"ors_call_records_cut_total {records_cut()}")
        family(
            "ors_connections_closed_total",
            "counter",
            "Connections the guard closed or refused: timeouts, evictions, caps.",
        )
        for why, n in sorted(self.connections_closed.items()):
            out.append(f"ors_connections_closed_total{_labels(('why',), (why,))} {n}")
        family("ors_tool_call_seconds", "histogram", "Tool call latency inside the server.")
        for env, h in sorted(self.latency.items()):
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS, h.counts, strict=False):
                cumulative += count
                le = f'le="{bound}"'
                out.append(
                    f"ors_tool_call_seconds_bucket{_labels(('env',), (env,), le)} {cumulative}"
                )
            inf = 'le="+Inf"'
            out.append(f"ors_tool_call_seconds_bucket{_labels(('env',), (env,), inf)} {h.n}")
            out.append(f"ors_tool_call_seconds_sum{_labels(('env',), (env,))} {h.total:.6f}")
            out.append(f"ors_tool_call_seconds_count{_labels(('env',), (env,))} {h.n}")
        return "\n".join(out) + "\n"
