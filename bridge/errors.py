"""The plugin's error types: one root, each class also the stdlib class callers may catch.

    BridgeError                       the root: every error the bridge raises on purpose
    ├── TemplateError    ValueError   a chat template unfit for incremental (delta) rendering
    ├── LedgerError      ValueError   tokens that cannot be accounted for
    ├── EngineError      RuntimeError the engine unreachable, or an unusable answer
    ├── EnvFailure       RuntimeError the environment or the network failed past the retries
    ├── InfraOutageError RuntimeError every recent group lost to the infrastructure
    ├── GroupDropped     RuntimeError fully-async: a sample lost too often; slime's worker drops
    │                                 its group (the one exception raised into slime on purpose)
    ├── DeliveryError                 a trajectory upload that did not land (`retry`)
    └── HTTP11Error                   bridge/http11.py's transport failure (`connected`)
        └── _NoResponse               (private) the connection died before any response byte

Private control-flow signals, never raised out of their module, also derive from BridgeError:
`env_client._Retryable`, `env_client._Resume`, `generate._SetupError`. At slime's hook
boundary none of these escapes but GroupDropped: `bridge.generate.generate` turns every failure
into sample data, and in fully-async mode raises GroupDropped for a sample whose episode was lost
`bridge.fully_async.MAX_REQUEUES` times (the only way to drop a group there).
A bad config is `contract.errors.ConfigError` (the contract's, shared by every part).
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "DeliveryError",
    "EngineError",
    "EnvFailure",
    "GroupDropped",
    "HTTP11Error",
    "InfraOutageError",
    "LedgerError",
    "TemplateError",
]


class BridgeError(Exception):
    """The root of the bridge's errors; the message is one line."""


class TemplateError(BridgeError, ValueError):
    """The chat template cannot be used for incremental (delta) rendering."""


class LedgerError(BridgeError, ValueError):
    """Tokens that cannot be accounted for (e.g. logprobs that do not match the sampled ids)."""


class EngineError(BridgeError, RuntimeError):
    """The engine could not be reached or answered something unusable."""


class EnvFailure(BridgeError, RuntimeError):
    """The environment or the network failed past the retries; the message is one line."""


class InfraOutageError(BridgeError, RuntimeError):
    """Every recent group was lost to the environment, the network or the engine."""


class GroupDropped(BridgeError, RuntimeError):
    """Fully-async: a sample's episode was lost to the infrastructure too many times in a row;
    slime's worker drops its group (never trained, prompt not retried)."""


class DeliveryError(BridgeError):
    """A request that did not land; `retry` says whether trying again later can help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry

    def __reduce__(self) -> tuple[type[DeliveryError], tuple[str, bool]]:
        return type(self), (str(self), self.retry)


class HTTP11Error(BridgeError):
    """A transport failure of bridge/http11.py's client (not `httpx.HTTPError`).

    `connected` is False when no connection could be made (nothing was sent).
    """

    def __init__(self, message: str, connected: bool = True) -> None:
        super().__init__(message)
        self.connected = connected

    def __reduce__(self) -> tuple[type[HTTP11Error], tuple[str, bool]]:
        return type(self), (str(self), self.connected)
