"""The server's error types, one line each for the client or the operator.

    envs.errors.EnvsError
    ├── OrsError         a refused request: status, machine-readable reason, one-line message
    ├── ClientGone       the client disconnected before its request body arrived
    └── ToolCrashed      an exception escaped an environment's tool (the message names its type)

    BaseException
    └── budget.BudgetExceeded   a call over its CPU budget (never caught by env code)

The reasons (`contract.vocab.OrsReason` for requests, `ToolRefusal` for tool calls) are the
contract's, shared with the client. `OrsError.body()` is the ORS error shape
`{"ok": false, "error", "reason", "detail"}`; `detail` is what the stock `openreward` client
shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from contract.vocab import OrsReason
from envs.errors import EnvsError

__all__ = ["ClientGone", "OrsError", "ToolCrashed"]


class OrsError(EnvsError):
    """A refused request: HTTP status, a machine-readable reason and a one-line message."""

    def __init__(
        self,
        status: int,
        reason: OrsReason | str,
        message: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = list(headers)

    def __reduce__(
        self,
    ) -> tuple[type[OrsError], tuple[int, OrsReason | str, str, list[tuple[bytes, bytes]]]]:
        return type(self), (self.status, self.reason, self.message, self.headers)

    def body(self) -> bytes:
        return orjson.dumps(
            {"ok": False, "error": self.message, "reason": self.reason, "detail": self.message}
        )


class ClientGone(EnvsError):
    """The client disconnected before its request body arrived."""


class ToolCrashed(EnvsError):
    """An exception escaped an environment's tool; the message names its type."""
