"""A per-call CPU budget for code that runs on the event loop (tool calls, scoring, task loading).

Tool coroutines run on the server's one event loop, so a tool that computes for a long time
stalls every session. `CallBudget.run(coro)` drives a coroutine step by step (each `send` is the
call's code running until its next await) and charges the call only the CPU time its steps
spend on the loop's thread: awaiting I/O (a judge request) costs nothing, and neither does what
a loaded machine does meanwhile. Wall time would blame the call for the server's slowness: other
processes on the cores, the trajectory writer holding the GIL, a garbage collection. A
collection that happens during a step is not charged either (gc.callbacks measure it). So a
legitimate call is never stopped because the machine is busy.

A SIGALRM ticker (every `limit / 4`, at most 50 ms of wall time) checks the step on the loop:
once the call's steps have used its budget, `BudgetExceeded` is raised inside the call's code at
the next bytecode boundary (never inside a collection's finalizers). A step costs two reads of
the thread's CPU clock; the ticker costs nothing per call. (Arming a timer per step measured
15 us per call; running tools in a process pool, ~150 us per call of parent and worker CPU:
`bench/env_server.py --attack`.)

What it cannot interrupt: a single C call that holds the GIL (one huge big-int operation, one
regex) runs to its end before the signal handler gets a turn. Inputs are therefore bounded
before such calls (request bodies in size, members and nesting depth: wire.py; the environments
bound their own work, e.g. envs/gsm8k.py: sizes of literals, exponents and operands); this
budget catches what such bounds miss in Python-level code.

Signals reach only the main thread: in a server whose loop runs in another thread, or in a
process where SIGALRM already has a handler (pytest-timeout), the budget is checked between
steps only, which is logged once.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Coroutine, Generator
from types import FrameType
from typing import Any, Generic, TypeVar

__all__ = ["DEFAULT_TOOL_BUDGET_S", "BudgetExceeded", "CallBudget"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TOOL_BUDGET_S = 0.25
MAX_TICK_S = 0.05

_cpu = time.thread_time


class BudgetExceeded(BaseException):
    """Raised inside code whose steps used more CPU on the event loop than its budget.

    A BaseException (like CancelledError), so `except Exception` in tool code cannot swallow it."""


class _GcClock:
    """CPU time the loop's thread has spent in garbage collections (not charged to calls)."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.collecting = False
        self._t0 = 0.0
        self._thread = threading.get_ident()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if threading.get_ident() != self._thread:
            return  # a collection on another thread only takes the GIL; not our CPU
        if phase == "start":
            self.collecting = True
            self._t0 = _cpu()
        else:
            self.spent += _cpu() - self._t0
            self.collecting = False


class CallBudget:
    """Limits the CPU time one call's code may use on the event loop (summed over its steps)."""

    def __init__(self, limit_s: float = DEFAULT_TOOL_BUDGET_S) -> None:
        if limit_s <= 0:
            raise ValueError("a call budget must be positive")
        self.limit_s = limit_s
        self.tick_s = min(MAX_TICK_S, limit_s / 4)
        self.interrupts = 0  # steps stopped by the ticker (a metric)
        self._running: _Budgeted[Any] | None = None  # the call whose step is on the loop now
        self._step_cpu0 = 0.0
        self._step_gc0 = 0.0
        self._gc: _GcClock | None = None
        self._signals: bool | None = None  # decided on first use, on the loop's thread

    def _install(self) -> bool:
        self._gc = _GcClock()
        gc.callbacks.append(self._gc)
        why = None
        if not hasattr(signal, "setitimer"):
            why = "this platform has no interval timers"
        elif threading.current_thread() is not threading.main_thread():
            why = "the event loop is not on the main thread"
        elif signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            why = "SIGALRM already has a handler (e.g. pytest-timeout)"
        if why is not None:
            log.warning(
                "tool budget: %s; the %.3gs budget is checked between a call's steps only "
                "(a step cannot be interrupted)",
                why,
                self.limit_s,
            )
            return False
        signal.signal(signal.SIGALRM, self._on_tick)
        signal.setitimer(signal.ITIMER_REAL, self.tick_s, self.tick_s)
        return True

    def close(self) -> None:
        """Stop the ticker (server shutdown)."""
        if self._signals:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            self._signals = None
        if self._gc is not None and self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
            self._gc = None

    def _gc_spent(self) -> float:
        return self._gc.spent if self._gc is not None else 0.0

    def _on_tick(self, signum: int, frame: FrameType | None) -> None:
        call = self._running
        if call is None or (self._gc is not None and self._gc.collecting):
            return
        used = _cpu() - self._step_cpu0 - (self._gc_spent() - self._step_gc0)
        if used > call.left:
            self._running = None
            self.interrupts += 1
            raise BudgetExceeded()

    def run(self, coro: Coroutine[Any, Any, T]) -> _Budgeted[T]:
        """An awaitable that runs `coro` under this budget; raises BudgetExceeded when spent."""
        if self._signals is None:
            self._signals = self._install()
        return _Budgeted(coro, self)


class _Budgeted(Generic[T]):
    """Drives one coroutine, charging each of its steps' CPU time to what is left of the budget."""

    __slots__ = ("_budget", "_coro", "left")

    def __init__(self, coro: Coroutine[Any, Any, T], budget: CallBudget) -> None:
        self._coro = coro
        self._budget = budget
        self.left = budget.limit_s

    def __await__(self) -> Generator[Any, Any, T]:
        return self  # an iterator with send/throw, as `yield from` needs

    def __iter__(self) -> _Budgeted[T]:
        return self

    def __next__(self) -> Any:
        return self._step(self._coro.send, None)

    def send(self, value: Any) -> Any:
        return self._step(self._coro.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._step(self._coro.throw, typ if val is None else val)

    def close(self) -> None:
        self._coro.close()

    def _step(self, fn: Any, arg: Any) -> Any:
        if self.left <= 0:
            self._coro.close()
            raise BudgetExceeded()
        budget = self._budget
        # None unless budgeted calls nest
        outer, outer_cpu0, outer_gc0 = budget._running, budget._step_cpu0, budget._step_gc0
        gc0 = budget._gc_spent()
        cpu0 = _cpu()
        budget._running, budget._step_cpu0, budget._step_gc0 = self, cpu0, gc0
        try:
            return fn(arg)
        except BudgetExceeded:
            self.left = 0.0
            self._coro.close()
            raise
        finally:
            budget._running, budget._step_cpu0, budget._step_gc0 = outer, outer_cpu0, outer_gc0
            self.left -= (_cpu() - cpu0) - (budget._gc_spent() - gc0)
