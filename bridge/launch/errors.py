"""The launcher's error types (run.sh's side); each message is one line for the user.

bridge.errors.BridgeError                 the root, shared with the plugin
├── LaunchError                           a launch that cannot go ahead (launcher)
├── ClusterError                          the cluster cannot be read or used (cluster)
├── LayoutError                           a GPU layout slime cannot run (layout)
├── ModeError                             a --mode this slime or these options cannot run
├── ResumeError                           a resume request that cannot be honoured
├── ServiceError       RuntimeError       a local service that did not come up (services)
├── TaskSourceError                       an environment whose tasks cannot be read
├── RolloutOnlyError                      a `run.sh --rollout-only` run that cannot start
├── RequestError       ValueError         a /generate request the CPU engine cannot serve
├── TinyModelError                        the tiny model cannot be built here
└── EvalError          ValueError         an eval that cannot run as asked (eval/)
"""

from __future__ import annotations

from bridge.errors import BridgeError

__all__ = [
    "ClusterError",
    "EvalError",
    "LaunchError",
    "LayoutError",
    "ModeError",
    "RequestError",
    "ResumeError",
    "RolloutOnlyError",
    "ServiceError",
    "TaskSourceError",
    "TinyModelError",
]


class LaunchError(BridgeError):
    """A launch that cannot go ahead; the message is meant for the user."""


class ClusterError(BridgeError):
    """The cluster cannot be read or used; the message is one line for the user."""


class LayoutError(BridgeError):
    """A layout slime cannot run; the message is one line for the user."""


class ModeError(BridgeError):
    """A mode this slime checkout or these options cannot run; one line for the user."""


class ResumeError(BridgeError):
    """A resume request that cannot be honoured; one line for the user."""


class ServiceError(BridgeError, RuntimeError):
    """A service that did not come up; the message is one line for the user."""


class TaskSourceError(BridgeError):
    """An environment that cannot be read; the message is one line meant for the user."""


class RolloutOnlyError(BridgeError):
    """A rollout-only run that cannot start; the message is one line for the user."""


class RequestError(BridgeError, ValueError):
    """A `/generate` request the engine cannot serve; the message is one line for the caller."""


class TinyModelError(BridgeError):
    """The tiny model cannot be built here; one line for the user."""


class EvalError(BridgeError, ValueError):
    """An eval that cannot run as asked; the message is one line for the user."""
