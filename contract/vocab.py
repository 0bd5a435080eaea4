"""The closed vocabularies both sides write and read: why an episode stopped, how it ended, what a
tool call got wrong, why an env server refused a request or a tool call.

- `StopReason`: why an episode stopped (`stop_reason` in sample metadata, trajectories, the
  store's rollouts and eval rows, W&B's `stop_reasons`);
- `EpisodeStatus`: how it ended, as slime's `Sample.Status` member of the same name;
- `ToolErrorKind`: what was wrong with one tool call (the keys of the `tool_errors` counter,
  W&B's `tool_errors/<kind>`, a tool message's `error`);
- `OrsReason`: why an env server refused a request (the `reason` of its ORS error body);
- `ToolRefusal`: why an environment refused one tool call, with the HTTP status the server
  answers and the tool-error kind the client counts.

Each is a `(str, Enum)` (Python 3.10 has no `StrEnum`) whose members are the stored strings:
they compare, hash and format as their values (`str(m) == f"{m}" == m.value`), so metadata, W&B
keys and store columns are the same text as before they were enums. Writers store `.value`, so
what leaves the bridge (sample metadata pickled by Ray, JSON, SQLite) is a plain `str`.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "FAILURE_STOPS",
    "HANDED_BACK_STOPS",
    "INFRA_STOPS",
    "SERVER_TOOL_ERRORS",
    "EpisodeStatus",
    "OrsReason",
    "StopReason",
    "ToolErrorKind",
    "ToolRefusal",
    "Vocabulary",
]


class Vocabulary(str, Enum):
    """A closed vocabulary whose members read as their values everywhere text is made (the base of
    every vocabulary here and of those the packages keep for themselves)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class StopReason(Vocabulary):
    """Why an episode stopped."""

    ENV_FINISHED = "env_finished"
    """The environment ended the episode (a tool result with `finished`)."""
    MAX_TURNS = "max_turns"
    """The task's `max_turns` assistant turns were used up."""
    CONTEXT_BUDGET = "context_budget"
    """The next turn, or the tool results just appended, would not fit the context budget."""
    RESPONSE_LENGTH = "response_length"
    """The engine stopped a turn at its `max_new_tokens` (finish_reason `length`)."""
    NO_TOOL_CALL = "no_tool_call"
    """The model wrote a turn without a tool call (after the one nudge, when the task nudges)."""
    SLIME_ABORT = "slime_abort"
    """slime aborted the rollout (its `GenerateState.aborted`); the sample goes back unfinished."""
    ENGINE_ABORT = "engine_abort"
    """In fully-async mode, the engine aborted a turn slime did not abort (a weight update pauses
    the engines): the sample goes back unfinished, slime's worker requeues its group, and the
    episode resumes on the new weights."""
    ENV_ERROR = "env_error"
    """The environment or the network failed past the retries (an infra failure)."""
    ENGINE_ERROR = "engine_error"
    """The inference engine failed past the retries (an infra failure)."""
    SETUP_ERROR = "setup_error"
    """The episode could not start: bad task metadata, no tokenizer, no env session."""
    BRIDGE_ERROR = "bridge_error"
    """The episode raised inside the bridge itself (a bug), recorded instead of crashing."""


HANDED_BACK_STOPS = frozenset({StopReason.SLIME_ABORT, StopReason.ENGINE_ABORT})
"""Episodes handed back to slime unfinished (status aborted, no reward), to resume later."""
INFRA_STOPS = frozenset({StopReason.ENV_ERROR, StopReason.ENGINE_ERROR})
"""Episodes lost to the environment, the network or the engine (never the model's doing)."""
FAILURE_STOPS = frozenset(
    {
        StopReason.ENV_ERROR,
        StopReason.ENGINE_ERROR,
        StopReason.SETUP_ERROR,
        StopReason.BRIDGE_ERROR,
    }
)
"""Every stop reason of a failed episode (status `failed`)."""


class EpisodeStatus(Vocabulary):
    """How an episode ended; the value of slime's `Sample.Status` member with the same name."""

    COMPLETED = "completed"
    """It ended on its own: the environment finished, or the model called no tool."""
    TRUNCATED = "truncated"
    """A limit cut it: `max_turns`, the context budget or the response length."""
    ABORTED = "aborted"
    """slime aborted it; no reward (with `--partial-rollout` it resumes later)."""
    FAILED = "failed"
    """It was lost to a failure (see `FAILURE_STOPS`); reward 0.0, never trained on."""


class ToolErrorKind(Vocabulary):
    """What was wrong with one tool call; the model sees the error text and the episode goes on."""

    PARSE_ERROR = "parse_error"
    """The `<tool_call>` block is not a JSON object with a `name` string."""
    UNKNOWN_TOOL = "unknown_tool"
    """The call names a tool the task does not offer (or the env answered `not_found`)."""
    INVALID_ARGUMENTS = "invalid_arguments"
    """The arguments are not a JSON object, or the env refused them (`input_validation`)."""
    ENV_REJECTED = "env_rejected"
    """The env refused the call for another reason (e.g. `episode_finished`)."""
    AFTER_FINISH = "after_finish"
    """A call written after the environment had finished the episode; not executed."""
    TOO_LARGE = "too_large"
    """The call's body is over the env server's limit; refused before it is sent, or by a 413."""
    BUDGET_EXCEEDED = "budget_exceeded"
    """The env server stopped the call at its CPU budget: the server's fact, never the model's
    (the input is not blamed, the environment's state is as it was before the call)."""


SERVER_TOOL_ERRORS = frozenset({ToolErrorKind.BUDGET_EXCEEDED})
"""Tool errors that are the server's doing, not the model's (not in W&B's `tool_errors_total`)."""


class OrsReason(Vocabulary):
    """Why an env server refused a request: the `reason` of its ORS error body."""

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
    JSON_TOO_DEEP = "json_too_deep"
    """400: a body nested deeper than the server accepts (refused before anything reads it)."""
    BUDGET_EXCEEDED = "budget_exceeded"
    """503 with Retry-After: the request's work (loading a task, listing tasks) was stopped at
    its CPU budget."""
    SESSION_OVER_BUDGET = "session_over_budget"
    """410: the session was ended after too many of its calls were stopped at their budget."""
    CLIENT_LIMIT = "client_limit"
    """429 with Retry-After: this client (its peer address) holds its share of the sessions."""


class ToolRefusal(Vocabulary):
    """Why an environment refused one tool call: the `reason` of an `ok: false` call result.

    The first five are the `openreward` SDK's own (an environment's tool raises them); the server
    answers each with its HTTP status (`status`, for clients that do not ask for SSE) and the
    client counts each as a `ToolErrorKind` (`error_kind`), so the two sides read one table.
    """

    NOT_FOUND = "not_found"
    """The environment has no tool of that name."""
    NAME_COLLISION = "name_collision"
    """Two tools of the session share the name."""
    INPUT_VALIDATION = "input_validation"
    """The tool's input model refused the arguments."""
    BAD_INPUT_SHAPE = "bad_input_shape"
    """The call's name or input has the wrong shape."""
    EPISODE_FINISHED = "episode_finished"
    """The episode was already over."""
    TOO_LARGE = "too_large"
    """The call's body is over the server's limit (a 413, as the client reports it)."""
    BUDGET_EXCEEDED = "budget_exceeded"
    """The server stopped the call at its CPU budget; the environment's state is unchanged."""

    @property
    def status(self) -> int:
        """The HTTP status the server answers this refusal with."""
        return _REFUSAL_STATUS[self]

    @property
    def error_kind(self) -> ToolErrorKind:
        """The tool-error kind the client counts this refusal as."""
        return _REFUSAL_KINDS[self]


_REFUSAL_STATUS = {
    ToolRefusal.NOT_FOUND: 404,
    ToolRefusal.NAME_COLLISION: 409,
    ToolRefusal.INPUT_VALIDATION: 422,
    ToolRefusal.BAD_INPUT_SHAPE: 400,
    ToolRefusal.EPISODE_FINISHED: 409,
    ToolRefusal.TOO_LARGE: 413,
    ToolRefusal.BUDGET_EXCEEDED: 503,
}
_REFUSAL_KINDS = {
    ToolRefusal.NOT_FOUND: ToolErrorKind.UNKNOWN_TOOL,
    ToolRefusal.NAME_COLLISION: ToolErrorKind.ENV_REJECTED,
    ToolRefusal.INPUT_VALIDATION: ToolErrorKind.INVALID_ARGUMENTS,
    ToolRefusal.BAD_INPUT_SHAPE: ToolErrorKind.INVALID_ARGUMENTS,
    ToolRefusal.EPISODE_FINISHED: ToolErrorKind.ENV_REJECTED,
    ToolRefusal.TOO_LARGE: ToolErrorKind.TOO_LARGE,
    ToolRefusal.BUDGET_EXCEEDED: ToolErrorKind.BUDGET_EXCEEDED,
}
