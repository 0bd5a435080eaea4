"""The tools' error types (run.sh's side); each message is one line for the user.

ToolsError                                the root
├── LaunchError                           a launch that cannot go ahead (launcher)
├── ClusterError                          the cluster cannot be read or used (cluster)
├── LayoutError                           a GPU layout slime cannot run (layout)
├── ModeError                             a --mode this slime or these options cannot run
├── ResumeError                           a resume request that cannot be honoured
├── ServiceError       RuntimeError       a local service that did not come up (services)
├── TaskSourceError                       an environment whose tasks cannot be read
├── RolloutOnlyError                      a `run.sh --rollout-only` run that cannot start
├── RequestError       ValueError         a /generate request the CPU engine cannot serve
├── EngineFault                           a backend's deliberate HTTP error, answered as its status
├── TinyModelError                        the tiny model cannot be built here
├── ReplayError                           `python -m tools.replay` cannot run
└── EvalError          ValueError         an eval that cannot run as asked (eval/)
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "EngineFault",
    "EvalError",
    "LaunchError",
    "LayoutError",
    "ModeError",
    "ReplayError",
    "RequestError",
    "ResumeError",
    "RolloutOnlyError",
    "ServiceError",
    "TaskSourceError",
    "TinyModelError",
    "ToolsError",
]


class ToolsError(Exception):
    """The root of the tools' errors; the message is one line for the user."""


class LaunchError(ToolsError):
    """A launch that cannot go ahead; the message is meant for the user."""


class ClusterError(ToolsError):
    """The cluster cannot be read or used; the message is one line for the user."""


class LayoutError(ToolsError):
    """A layout slime cannot run; the message is one line for the user."""


class ModeError(ToolsError):
    """A mode this slime checkout or these options cannot run; one line for the user."""


class ResumeError(ToolsError):
    """A resume request that cannot be honoured; one line for the user."""


class ServiceError(ToolsError, RuntimeError):
    """A service that did not come up; the message is one line for the user."""


class TaskSourceError(ToolsError):
    """An environment that cannot be read; the message is one line meant for the user."""


class RolloutOnlyError(ToolsError):
    """A rollout-only run that cannot start; the message is one line for the user."""


class RequestError(ToolsError, ValueError):
    """A `/generate` request the engine cannot serve; the message is one line for the caller."""


class TinyModelError(ToolsError):
    """The tiny model cannot be built here; one line for the user."""


class EvalError(ToolsError, ValueError):
    """An eval that cannot run as asked; the message is one line for the user."""


class ReplayError(ToolsError):
    """The replay cannot run (no such rollout, unreachable server, unknown env); one line."""


class EngineFault(ToolsError):
    """A backend's deliberate HTTP error (the tests' fault injection): answered as `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
