"""The trajectory store's error types (rooted at `envs.errors.EnvsError`) and the reasons its
HTTP API refuses a request with.

EnvsError
├── StoreError      RuntimeError  the database cannot be used (schema)
└── SpecMismatch    ValueError    an eval of that name exists with another spec (evals)

`ApiReason` is the closed list of `reason`s in the API's error bodies
`{"ok": false, "error": one line, "reason": ...}` (api.py, evalui.py).
"""

from __future__ import annotations

from contract.vocab import Vocabulary
from envs.errors import EnvsError

__all__ = ["ApiReason", "SpecMismatch", "StoreError"]


class ApiReason(Vocabulary):
    """Why the trajectory API refused a request: the `reason` of its error body."""

    BAD_REQUEST = "bad_request"
    """400: a header that cannot be read (a Content-Length that is not a number)."""
    TOO_LARGE = "too_large"
    """413: an upload over the body limit, by its Content-Length or while it streams."""
    BAD_JSON = "bad_json"
    """400: an upload body that is not JSON."""
    INVALID_EVENT = "invalid_event"
    """422: events that fail validation; the others in the batch are stored."""
    STORAGE_ERROR = "storage_error"
    """503: the store failed to write; retry."""
    NOT_FOUND = "not_found"
    """404: no run, rollout or eval with that id."""
    BAD_QUERY = "bad_query"
    """422: query parameters that cannot be used (an unknown order, a bad cursor)."""


class StoreError(EnvsError, RuntimeError):
    """The database cannot be used (unwritable path, not a SQLite file, newer schema)."""


class SpecMismatch(EnvsError, ValueError):
    """An eval of that name exists with another spec; the message is one line for the user."""
