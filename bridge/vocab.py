"""The bridge's closed vocabularies: why an episode stopped, how it ended, what a tool call got
wrong.

- `StopReason`: why an episode stopped (`stop_reason` in sample metadata, trajectories, the
  store's rollouts and eval rows, W&B's `stop_reasons`);
- `EpisodeStatus`: how it ended, as slime's `Sample.Status` member of the same name;
- `ToolErrorKind`: what was wrong with one tool call (the keys of the `tool_errors` counter,
  W&B's `tool_errors/<kind>`, a tool message's `error`).

Each is a `(str, Enum)` (Python 3.10 has no `StrEnum`) whose members are the stored strings:
they compare, hash and format as their values (`str(m) == f"{m}" == m.value`), so metadata, W&B
keys and store columns are the same text as before they were enums. Writers store `.value`, so
what leaves the bridge (sample metadata pickled by Ray, JSON, SQLite) is a plain `str`.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "FAILURE_STOPS",
    "INFRA_STOPS",
    "EpisodeStatus",
    "StopReason",
    "ToolErrorKind",
    "Vocabulary",
]


class Vocabulary(str, Enum):
    """A closed vocabulary whose members read as their values everywhere text is made (the base of
    every vocabulary here and of `envs.server.errors.OrsReason`)."""

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
    ENV_ERROR = "env_error"
    """The environment or the network failed past the retries (an infra failure)."""
    ENGINE_ERROR = "engine_error"
    """The inference engine failed past the retries (an infra failure)."""
    SETUP_ERROR = "setup_error"
    """The episode could not start: bad task metadata, no tokenizer, no env session."""
    BRIDGE_ERROR = "bridge_error"
    """The episode raised inside the bridge itself (a bug), recorded instead of crashing."""


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
