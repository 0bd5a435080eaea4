"""The env session for a task: hosted OpenReward environments (`Owner/Name`) through the SDK
(`bridge.env_hosted`), the rest on our env servers over lean HTTP (`bridge.env_local`); the
protocol both follow is `bridge.env_session`."""

from __future__ import annotations

from bridge.env_hosted import HostedEnvSession, close_sdk_client
from bridge.env_local import LocalEnvSession
from bridge.env_session import EnvSession, RetryPolicy, pick_server
from bridge.http11 import client_for_loop, close_loop_client
from contract.task import TaskMeta


def open_session(
    task: TaskMeta, urls: list[str], key: str, policy: RetryPolicy = RetryPolicy()
) -> EnvSession:
    """An unopened session for `task`: hosted via the SDK for `Owner/Name`, else on our env server.

    `urls` (the job's TRAIN_CONFIG env_server) win over the task row's own: run.sh hands the
    job the servers it started; the row's URLs are for running without a config.
    """
    if task.hosted:
        return HostedEnvSession(task, policy)
    return LocalEnvSession(
        client_for_loop(), pick_server(urls or task.env_server, key), task, policy
    )


async def close_shared_http() -> None:
    """Close this event loop's env HTTP session and SDK client (if any)."""
    await close_loop_client()
    await close_sdk_client()
