"""The trajectory store's error types (rooted at `envs.errors.EnvsError`).

EnvsError
├── StoreError      RuntimeError  the database cannot be used (schema)
└── SpecMismatch    ValueError    an eval of that name exists with another spec (evals)
"""

from __future__ import annotations

from envs.errors import EnvsError

__all__ = ["SpecMismatch", "StoreError"]


class StoreError(EnvsError, RuntimeError):
    """The database cannot be used (unwritable path, not a SQLite file, newer schema)."""


class SpecMismatch(EnvsError, ValueError):
    """An eval of that name exists with another spec; the message is one line for the user."""
