"""Play one episode of an environment by hand: `python -m envs play whodunit --split train --index
3`.

Shows the prompt and the tools, then reads tool calls from stdin, one per line, either as
`{"name": "list_clues", "arguments": {}}` or as `list_clues {}` (arguments optional), and prints
each output with its reward. Runs the environment in-process, or against a running server
(`--url`, through the stock `openreward` client). Bad input gets a message and the episode
goes on; `quit` or end of input ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from envs.errors import PlayError

os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENREWARD_DISABLE_UPDATE_CHECK", "1")

from contract.task import blocks_to_text

QUIT_WORDS = frozenset({"quit", "exit", "q", ":q"})


@dataclass
class CallResult:
    """What one tool call produced, whichever way the env was reached."""

    text: str = ""
    reward: float | None = None
    finished: bool = False
    error: str | None = None  # a refused call ("input_validation: ...") or an env crash
    fatal: bool = False  # the session cannot continue


class EpisodeBackend(Protocol):
    async def prompt(self) -> str: ...
    async def tools(self) -> list[dict[str, Any]]: ...
    async def call(self, name: str, arguments: dict[str, Any]) -> CallResult: ...


# ---------------------------------------------------------------- backends


class InProcessEpisode:
    """The environment class instantiated here, called through the SDK's own tool dispatch."""

    def __init__(self, env: Any) -> None:
        self.env = env

    async def prompt(self) -> str:
        from openreward.environments.utils import run_user_callable

        return blocks_to_text(await run_user_callable(self.env.get_prompt))

    async def tools(self) -> list[dict[str, Any]]:
        from openreward.environments.session import list_session_tools

        return [t.model_dump() for t in (await list_session_tools(self.env, None)).tools]

    async def call(self, name: str, arguments: dict[str, Any]) -> CallResult:
        try:
            res = (await self.env._call_tool(name, arguments)).root
        except Exception as e:
            return CallResult(error=f"environment error: {type(e).__name__}: {e}")
        if not res.ok:
            return CallResult(error=f"{res.reason or 'error'}: {res.error}")
        out = res.output
        return CallResult(text=blocks_to_text(out.blocks), reward=out.reward, finished=out.finished)


@contextlib.asynccontextmanager
async def in_process_episode(
    env_name: str, split: str, index: int, config_path: str | None
) -> AsyncIterator[InProcessEpisode]:
    from openreward.environments.utils import run_user_callable

    from envs.errors import UnknownEnvironment
    from envs.registry import configure_env, load_env_class

    try:
        cls = load_env_class(env_name)
    except UnknownEnvironment as e:
        raise PlayError(str(e)) from None
    if config_path:
        from contract.config import load_config
        from contract.errors import ConfigError

        try:
            cfg = load_config(config_path)
        except ConfigError as e:
            raise PlayError(str(e)) from None
        entry = {k.lower(): v for k, v in cfg.environments.items()}.get(env_name.lower())
        if entry is not None:
            try:
                configure_env(cls, entry.options)
            except Exception as e:
                raise PlayError(f"{config_path}: environments.{env_name}.options: {e}") from None
    splits = [s if isinstance(s, str) else s.name for s in cls.list_splits()]
    if split not in splits:
        raise PlayError(f"{env_name} has no split {split!r}; splits: {', '.join(splits)}")
    try:
        task = await run_user_callable(cls.get_task, split, index)
    except IndexError:
        raise PlayError(f"{env_name} split {split!r} has no task {index}") from None
    except Exception as e:
        raise PlayError(f"{env_name}: cannot load task {index}: {type(e).__name__}: {e}") from None
    env = await run_user_callable(cls, task_spec=task, secrets={})
    await run_user_callable(env.setup)
    try:
        yield InProcessEpisode(env)
    finally:
        await run_user_callable(env.teardown)


class RemoteEpisode:
    """A session on a running ORS server, through the stock `openreward` client."""

    def __init__(self, session: Any) -> None:
        self.session = session

    async def prompt(self) -> str:
        return blocks_to_text(await self.session.get_prompt())

    async def tools(self) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in await self.session.list_tools()
        ]

    async def call(self, name: str, arguments: dict[str, Any]) -> CallResult:
        from openreward.api.errors import ToolCallError, ToolFailed

        try:
            out = await self.session.call_tool(name, arguments)
        except ToolCallError as e:
            return CallResult(error=f"{e.reason}: {e.detail}" if hasattr(e, "detail") else str(e))
        except ToolFailed as e:
            return CallResult(error=f"environment error: {e}", fatal=True)
        return CallResult(text=blocks_to_text(out.blocks), reward=out.reward, finished=out.finished)


@contextlib.asynccontextmanager
async def remote_episode(
    url: str, env_name: str, split: str, index: int, api_key: str | None
) -> AsyncIterator[RemoteEpisode]:
    import aiohttp
    from openreward import AsyncOpenReward
    from openreward.api.errors import MaxRetriesError

    client = AsyncOpenReward(
        api_key=api_key or os.environ.get("ENV_SERVER_API_KEY") or "local", base_url=url
    )
    try:
        env = client.environments.get(env_name, variant=env_name.lower(), base_url=url)
        try:
            session = env.session(split=split, index=index)
            await session.__aenter__()
        except aiohttp.ClientResponseError as e:
            raise PlayError(f"{url}: {e.status} {e.message}") from None
        except (aiohttp.ClientError, OSError, MaxRetriesError) as e:
            last = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
            raise PlayError(f"cannot reach the env server at {url}: {last}") from None
        except Exception as e:  # the SDK wraps failures in its own error types
            raise PlayError(
                f"{url}: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            ) from None
        try:
            yield RemoteEpisode(session)
        finally:
            await session.__aexit__(None, None, None)
    finally:
        await client.environments.aclose()


# ---------------------------------------------------------------- the terminal loop


def parse_tool_call(line: str) -> tuple[str, dict[str, Any]]:
    """`{"name": ..., "arguments": {...}}` (arguments may be a JSON string) or `name {json}`."""
    line = line.strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise ValueError(
                'a JSON tool call needs a "name" string, e.g. {"name": "list_clues", '
                '"arguments": {}}'
            )
        args = obj.get("arguments", obj.get("input", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"arguments string is not valid JSON: {e.msg}") from None
        name = obj["name"]
    else:
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        try:
            args = json.loads(rest) if rest else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"arguments are not valid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(args, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(args).__name__}")
    return name, args


def tool_signature(spec: dict[str, Any]) -> str:
    """`submit_answer(who: string, what: string, why?: string)` from an ORS tool spec."""
    schema = spec.get("input_schema") or {}
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    params = []
    for name, p in props.items():
        kind = p.get("type") or "/".join(x.get("type", "?") for x in p.get("anyOf", [])) or "any"
        params.append(f"{name}{'' if name in required else '?'}: {kind}")
    return f"{spec['name']}({', '.join(params)})"


@dataclass
class Score:
    rewards: list[float] = field(default_factory=list)
    calls: int = 0
    finished: bool = False
    final: float | None = None


async def play_episode(backend: EpisodeBackend, title: str, stdin: TextIO, out: TextIO) -> Score:
    """Show prompt and tools, then run tool calls from `stdin` until the episode ends or input
    does."""

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    say(f"== {title} ==")
    say(await backend.prompt())
    tools = await backend.tools()
    say("\n-- tools --")
    for spec in tools:
        summary = (spec.get("description") or "").splitlines()[0] if spec.get("description") else ""
        say(f"  {tool_signature(spec)}  {summary}".rstrip())
    say(
        '\nOne tool call per line: {"name": "tool", "arguments": {...}}  or  tool {...}.  "quit" '
        "ends."
    )
    score = Score()
    while True:
        out.write("> ")
        out.flush()
        line = await asyncio.to_thread(stdin.readline)
        if not line:
            say()
            break
        line = line.strip()
        if not line:
            continue
        if line.lower() in QUIT_WORDS:
            break
        try:
            name, args = parse_tool_call(line)
        except ValueError as e:
            say(f"! {e}")
            continue
        res = await backend.call(name, args)
        score.calls += 1
        if res.error is not None:
            say(f"! {res.error}")
            if res.fatal:
                say("! the session ended after this error")
                break
            continue
        say(res.text)
        if res.reward is not None:
            score.rewards.append(res.reward)
        say(
            f"[reward: {'none' if res.reward is None else f'{res.reward:g}'}  finished: "
            f"{str(res.finished).lower()}]"
        )
        if res.finished:
            score.finished, score.final = True, res.reward
            break
    total = sum(score.rewards)
    if score.finished:
        say(
            "== episode finished: final reward "
            f"{score.final if score.final is not None else 'none'}, "
            f"sum of rewards {total:g} over {score.calls} calls =="
        )
    else:
        say(f"== episode not finished: sum of rewards {total:g} over {score.calls} calls ==")
    return score


async def run(args: argparse.Namespace) -> int:
    title = f"{args.env} {args.split} #{args.index}" + (
        f" on {args.url}" if args.url else " (in-process)"
    )
    episode: contextlib.AbstractAsyncContextManager[EpisodeBackend]
    if args.url:
        episode = remote_episode(
            args.url.rstrip("/"), args.env, args.split, args.index, args.api_key
        )
    else:
        episode = in_process_episode(args.env, args.split, args.index, args.config)
    async with episode as backend:
        await play_episode(backend, title, sys.stdin, sys.stdout)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "env", help="environment: gsm8k, whodunit, haiku, a registered name, or module:Class"
    )
    p.add_argument("--split", default="train")
    p.add_argument("--index", type=int, default=0)
    p.add_argument(
        "--url",
        help="play against a running env server (python -m envs.server) instead of in-process",
    )
    p.add_argument(
        "--config", help="train_config.yaml whose environments.<env>.options apply (in-process)"
    )
    p.add_argument("--api-key", help="X-API-Key for --url (default: $ENV_SERVER_API_KEY)")


def main(args: argparse.Namespace) -> int:
    """Entry point for `python -m envs play`."""
    try:
        return asyncio.run(run(args))
    except PlayError as e:
        print(f"play: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
