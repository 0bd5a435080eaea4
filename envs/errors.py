"""The error types of the envs package, one root; each class also the stdlib class it replaces.

    EnvsError                             the root
    ├── UnknownEnvironment  KeyError      a name the registry does not know (registry)
    ├── PlayError                         `python -m envs play` cannot start the episode
    ├── CalculatorError     ValueError    an expression gsm8k's calculator refuses (the model
    │                                     sees the message)
    ├── GSM8KDataMissing    RuntimeError  GSM8K data that cannot be read
    ├── JudgeError          RuntimeError  haiku's LLM judge failed (the episode scores without it)
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
    "CalculatorError",
    "EnvsError",
    "GSM8KDataMissing",
    "JudgeError",
    "PlayError",
    "UnknownEnvironment",
]


class EnvsError(Exception):
    """The root of the envs package's errors."""


class UnknownEnvironment(EnvsError, KeyError):
    """A name that is not a local environment; the message lists the known ones."""

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        super().__init__(name)
        self.known = tuple(known)

    def __reduce__(self) -> tuple[type[UnknownEnvironment], tuple[str, tuple[str, ...]]]:
        return type(self), (self.args[0], self.known)

    def __str__(self) -> str:
        listed = ", ".join(self.known)
        return f"unknown environment {self.args[0]!r}; local environments are: {listed}"


class PlayError(EnvsError):
    """Something that stops the episode from starting; the message is one line for the user."""


class CalculatorError(EnvsError, ValueError):
    """An expression the calculator refuses; the message is shown to the model."""


class GSM8KDataMissing(EnvsError, RuntimeError):
    """GSM8K data that cannot be read; the message is one line naming the fix."""


class JudgeError(EnvsError, RuntimeError):
    """The haiku LLM judge failed (unreachable, timed out, or an unusable reply)."""
