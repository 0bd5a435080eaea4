"""Giving memory back after large requests: the young garbage collected and freed heap returned
to the OS (malloc_trim), on a thread of its own, shortly after the last large request.

Never a full collection there: that walks every live object of the process (the sessions'
environments included) holding the GIL, and once stalled the event loop after each large
upload. glibc is tuned to return large buffers when they are freed (`tune_malloc`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
from typing import Any

__all__ = ["YOUNG_GENERATIONS", "release_memory_soon", "tune_malloc"]


def release_memory_soon() -> None:
    """Collect garbage and hand freed heap memory back to the OS shortly after a large request
    or response (3.5 GB once stayed after slow readers of large rollouts had left)."""
    _TRIMMER.request()


class _Trimmer:
    """One daemon thread that collects the young generations and runs malloc_trim(0) half a
    second after the last request for it.

    Never a full collection: that walks every live object of the process (the sessions' envs
    included) while holding the GIL, and once stalled the event loop after each large upload.
    What a cancelled stream leaves in a cycle is young, and small: the stream drops each page
    and slice as soon as it is sent."""

    DELAY_S = 0.5

    def __init__(self) -> None:
        self.runs = 0
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def request(self) -> None:
        self._wanted.set()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            while self._wanted.is_set():  # wait until requests stop for DELAY_S
                self._wanted.clear()
                time.sleep(self.DELAY_S)
            # Cancelled streams leave reference cycles (frames) that the server's relaxed GC
            # thresholds (envs/server/__main__.py) would keep for minutes; they are young.
            gc.collect(YOUNG_GENERATIONS)
            self.runs += 1
            if _libc is not None:
                _libc.malloc_trim(0)


YOUNG_GENERATIONS = 1  # gc.collect(1): generations 0 and 1
_TRIMMER = _Trimmer()


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


_libc = _glibc()
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8


def tune_malloc() -> None:
    """Make glibc return large buffers to the OS when they are freed (a fixed mmap threshold:
    the default one rises after each large free until multi-MB buffers stay in the heap) and
    keep the number of per-thread heaps small."""
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)
        _libc.mallopt(_M_ARENA_MAX, 2)
