"""What `run.sh --rollout-only` starts when it does not run yet: the config's env servers, and an
engine (`--engine local`: the CPU engine on a Hugging Face model; `--engine scripted`: the scripted
player, no model), each checked before anything starts and stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
from pathlib import Path

import yaml

from contract.config import TrainConfig
from tools.engines.scripted import DEFAULT_TOKENIZER
from tools.engines.tiny_model import LOCAL_EXTRA
from tools.errors import RolloutOnlyError
from tools.launch.services import (
    PROJECT_ROOT,
    answers,
    env_server_command,
    free_port,
    is_loopback,
    local_engine_command,
    managed_process,
    scripted_engine_command,
)

TINY_DIR = "./tiny-qwen3"


def config_for_run(cfg: TrainConfig, config_path: str, env_url: str | None) -> str:
    """The config file the bridge reads ($TRAIN_CONFIG): the user's, or a copy with --env-server."""
    if env_url is None or env_url in cfg.env_server_urls:
        return str(Path(config_path).resolve())
    data = cfg.model_dump(mode="json")
    data["env_server"] = env_url
    out = PROJECT_ROOT / "runs" / cfg.run_name / "rollout_only_config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(out)


def env_servers(cfg: TrainConfig, env_url: str | None) -> list[str]:
    """Where the episodes' local envs are served: --env-server, else the config's env_server (which
    the bridge prefers to the URLs a task row carries)."""
    return [env_url] if env_url is not None else cfg.env_server_urls


def start_env_servers(
    stack: contextlib.ExitStack, urls: list[str], opts: argparse.Namespace
) -> bool:
    """Start the loopback env servers in `urls` that do not answer (the first keeps the store); True
    if the first one was started here."""
    started_first = False
    for u in urls:
        if answers(u):
            continue
        if not is_loopback(u):
            raise RolloutOnlyError(
                f"env server {u} does not answer /health; start it there "
                f"(python -m envs.server --config {opts.config} ...) or pass --env-server"
            )
        db = str(Path(opts.db).resolve())
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        cmd = env_server_command(
            opts.config, u, db, tokenizers=[opts.model] if opts.model else []
        ) + ([] if u == urls[0] else ["--role", "env"])
        print(f"rollout-only: starting env server at {u} (store: {db})", flush=True)
        stack.enter_context(managed_process("env server", cmd, u))
        started_first = started_first or u == urls[0]
    return started_first


def start_engine(stack: contextlib.ExitStack, opts: argparse.Namespace) -> str:
    """The /generate URL: --engine-url, or an engine started here on a free port (the CPU engine,
    or the scripted one)."""
    if opts.engine is None:
        return str(opts.engine_url)
    url = f"http://127.0.0.1:{free_port()}"
    if opts.engine == "scripted":
        print(
            "rollout-only: starting tools.engines.scripted - a fixed player of the three "
            "environments (no model): tool calls, not good answers",
            flush=True,
        )
        cmd = scripted_engine_command(opts.model, url)
        stack.enter_context(managed_process("scripted engine", cmd, url, timeout=300.0))
        return url
    print(
        "rollout-only: starting tools.engines.local_engine on the CPU - a debugging engine, "
        "one request at a time; not for training throughput",
        flush=True,
    )
    stack.enter_context(
        managed_process("local engine", local_engine_command(opts.model, url), url, timeout=600.0)
    )
    return url


def default_scripted_tokenizer() -> str:
    """The tokenizer the scripted engine uses without --model: the Qwen3 one setup.sh --test
    fetches."""
    if not (DEFAULT_TOKENIZER / "tokenizer.json").is_file():
        raise RolloutOnlyError(
            f"--engine scripted needs a Qwen3 tokenizer: {DEFAULT_TOKENIZER} is missing (bash "
            "setup.sh --test fetches it), or pass --model DIR"
        )
    return str(DEFAULT_TOKENIZER)


def check_model(model: str, engine_local: bool) -> None:
    """The model (tokenizer, and the local engine's weights) loads offline: a directory with a
    config.json, or a hub id already in the Hugging Face cache. Checked before anything starts."""
    make = f"python -m tools.engines.tiny_model {TINY_DIR}"
    if engine_local and importlib.util.find_spec("torch") is None:
        raise RolloutOnlyError(f"--engine local needs torch: {LOCAL_EXTRA}")
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file() and not (p / "tokenizer_config.json").is_file():
            raise RolloutOnlyError(
                f"--model {model} is not a Hugging Face model directory (no config.json)"
            )
        return
    looks_like_path = model.startswith((".", "/", "~")) or p.exists() or model.count("/") != 1
    if looks_like_path:
        raise RolloutOnlyError(
            f"--model {model}: no such directory; for a tiny offline test model: {make} "
            f"&& bash run.sh --rollout-only --engine local --model {TINY_DIR} ..."
        )
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "config.json"), str):
        raise RolloutOnlyError(
            f"--model {model} is neither a local directory nor in the Hugging Face cache: "
            f"hf download {model} --local-dir ./{p.name} (needs the Hub), or offline: {make}"
        )
