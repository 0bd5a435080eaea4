"""The error types of the envs package, one root; each class also the stdlib class it replaces.

    EnvsError                             the root
    ├── UnknownEnvironment  KeyError      a name that resolves to no environment class (registry)
    ├── PlayError                         `python -m envs play` cannot start the episode
    ├── CalculatorError     ValueError    an expression gsm8k's calculator refuses (the model
    │                                     sees the message)
    ├── GSM8KDataMissing    RuntimeError  GSM8K data that cannot be read
    ├── JudgeError          RuntimeError  haiku's LLM judge failed (the episode scores without it)
    ├── ScaffoldError       ValueError    `python -m envs new` cannot use a name or directory
    ├── CheckError          RuntimeError  `python -m envs check` cannot run (bad name, no server)
    ├── ServerGone          RuntimeError  the env server stopped answering during a check
    ├── AdapterError        ValueError    another framework's environment an adapter cannot
    │                                     serve (envs/adapters/)
    ├── server.errors:                    the env server (envs/server/errors.py)
    │   ├── OrsError                      a refused request, in the ORS error shape
    │   ├── ClientGone                    the client left before its request body arrived
    │   └── ToolCrashed                   an exception escaped an environment's tool
    └── trajectories.errors:              the trajectory store (envs/trajectories/errors.py)
        ├── StoreError      RuntimeError  the database cannot be used
        └── SpecMismatch    ValueError    an eval of that name exists with another spec

    BaseException
    └── server.budget.BudgetExceeded      a call over its CPU budget; a BaseException
                                          on purpose, so env code's `except Exception` cannot
                                          swallow it

Each subpackage keeps its errors in its own `errors.py`; all share `EnvsError`.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AdapterError",
    "CalculatorError",
    "CheckError",
    "EnvsError",
    "GSM8KDataMissing",
    "JudgeError",
    "PlayError",
    "ScaffoldError",
    "ServerGone",
    "UnknownEnvironment",
]


class EnvsError(Exception):
    """The root of the envs package's errors."""


class UnknownEnvironment(EnvsError, KeyError):
    """A name that resolves to no environment class; the message is one line naming what was
    tried (the built-in and registered names, or the import that failed and why)."""

    def __init__(self, name: str, known: Iterable[str] = (), detail: str | None = None) -> None:
        super().__init__(name)
        self.known = tuple(known)
        self.detail = detail

    def __reduce__(
        self,
    ) -> tuple[type[UnknownEnvironment], tuple[str, tuple[str, ...], str | None]]:
        return type(self), (self.args[0], self.known, self.detail)

    def __str__(self) -> str:
        if self.detail is not None:
            return f"environment {self.args[0]!r}: {self.detail}"
        listed = ", ".join(self.known)
        return (
            f"unknown environment {self.args[0]!r}: not a built-in or registered name "
            f"({listed}; packages register names in the entry point group "
            "slime_envs.environments), and not module:Class"
        )


class PlayError(EnvsError):
    """Something that stops the episode from starting; the message is one line for the user."""


class CalculatorError(EnvsError, ValueError):
    """An expression the calculator refuses; the message is shown to the model."""


class GSM8KDataMissing(EnvsError, RuntimeError):
    """GSM8K data that cannot be read; the message is one line naming the fix."""


class JudgeError(EnvsError, RuntimeError):
    """The haiku LLM judge failed (unreachable, timed out, or an unusable reply)."""


class ScaffoldError(EnvsError, ValueError):
    """A name or directory `python -m envs new` cannot use; one line naming the fix."""


class CheckError(EnvsError, RuntimeError):
    """`python -m envs check` cannot run (an unknown name, a bad config, a server that does not
    start); one line for the user."""


class ServerGone(EnvsError, RuntimeError):
    """The env server stopped answering during a check (it crashed or hung)."""


class AdapterError(EnvsError, ValueError):
    """Another framework's environment that an adapter cannot serve (a sandbox environment, a
    missing dataset); one line naming what is not supported."""
