"""The server's error types, one line each for the client or the operator.

    envs.errors.EnvsError
    ├── OrsError         a refused request: status, machine-readable reason, one-line message
    ├── ClientGone       the client disconnected before its request body arrived
    └── ToolCrashed      an exception escaped an environment's tool (the message names its type)

    BaseException
    └── budget.BudgetExceeded   a tool call over its time budget (never caught by env code)

`OrsReason` is the closed list of reasons this server refuses a request with (tool-level refusals
the SDK makes inside an environment, e.g. `not_found`, `episode_finished`, travel as the SDK writes
them). `OrsError.body()` is the ORS error shape `{"ok": false, "error", "reason", "detail"}`;
`detail` is what the stock `openreward` client shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from bridge.vocab import Vocabulary
from envs.errors import EnvsError

__all__ = ["ClientGone", "OrsError", "OrsReason", "ToolCrashed"]


class OrsReason(Vocabulary):
    """Why this server refused a request: the `reason` of its ORS error body."""

    UNAUTHORIZED = "unauthorized"
    """401: a missing or wrong X-API-Key."""
    METHOD_NOT_ALLOWED = "method_not_allowed"
    """405: an HTTP method the path does not take."""
    UNKNOWN_ENV = "unknown_env"
    """404: no environment of that name here (or none at all)."""
    UNKNOWN_SESSION = "unknown_session"
    """404: no session with that id (call /create first)."""
    SESSION_EXPIRED = "session_expired"
    """410: the session was reaped after being idle."""
    SESSION_DELETED = "session_deleted"
    """410: the session was deleted by its client."""
    SESSION_EXISTS = "session_exists"
    """400: /create with the id of a live session (as the SDK server)."""
    TOO_MANY_SESSIONS = "too_many_sessions"
    """503 with Retry-After: the server is at --max-sessions."""
    WRONG_ENV = "wrong_env"
    """400: the session belongs to another environment."""
    MISSING_SESSION_ID = "missing_session_id"
    """400: no X-Session-ID header."""
    BAD_SESSION_ID = "bad_session_id"
    """400: an X-Session-ID that cannot be a session id."""
    BAD_SECRETS = "bad_secrets"
    """400: an X-Secrets header that is not base64 JSON {name: {value}}."""
    BODY_TOO_LARGE = "body_too_large"
    """413: a request body over the size limit."""
    BAD_JSON = "bad_json"
    """400: a body that is not a JSON object."""
    BAD_REQUEST = "bad_request"
    """400: a field missing or of the wrong type, or contradictory fields."""
    BAD_INPUT_SHAPE = "bad_input_shape"
    """400: a tool call whose name or input has the wrong shape."""
    INVALID_SPLIT = "invalid_split"
    """400: a split the environment does not have."""
    INVALID_INDEX = "invalid_index"
    """400: a task index outside the split."""
    INVALID_TASK_SPEC = "invalid_task_spec"
    """400: a task_spec the environment refuses."""
    NOT_SUPPORTED = "not_supported"
    """An operation this environment does not implement."""
    ENV_ERROR = "env_error"
    """500: an exception inside the environment (the message names it)."""
    INTERNAL = "internal"
    """500: a bug in the server itself."""
    CONNECTION_REFUSED = "connection_refused"
    """408, 431 or 503 from the connection guard: headers too slow or too large, or every
    connection busy (connections.py)."""


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
