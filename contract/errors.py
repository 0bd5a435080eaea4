"""The contract's error types: one root, each class also the stdlib class callers may catch.

    ContractError                     the root: what the shared contract refuses
    └── ConfigError      ValueError   train_config.yaml (or $TRAIN_CONFIG) cannot be used

Both sides (the plugin and the env server) and the tools read the config through
`contract.config`, so they all catch the same `ConfigError`.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ContractError"]


class ContractError(Exception):
    """The root of the contract's errors; the message is one line."""


class ConfigError(ContractError, ValueError):
    """A config that cannot be used; the message is one line meant for the user."""
