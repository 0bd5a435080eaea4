"""SGLang engines that already run (`--engine-addrs HOST:PORT[,HOST:PORT...]`): slime's
`--rollout-external-engine-addrs`.

slime then launches no engine of its own: its driver reads each engine's `/server_info` (else
`/get_server_info`) for tp/pp (its GPUs), checks that the engine runs with the server arguments it
would have launched it with (`enable_memory_saver` false unless slime offloads rollouts; `dtype`
with --fp16), and starts its router in front of them. So run.sh plans no rollout GPUs, and checks
before submitting that every address answers `/server_info`: one MISSING line per engine that
does not, with the command that starts one.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import httpx

from tools.errors import LaunchError
from tools.launch import prerequisites as pre

INFO_PATHS = ("/server_info", "/get_server_info")
PROBE_TIMEOUT = 60.0
"""Seconds an engine may take to answer /server_info (the CPU engines load SGLang's arguments
on the first call)."""


@dataclass(frozen=True)
class ExternalEngine:
    """One engine: its address as slime takes it, and its GPUs when it answered."""

    addr: str
    """host:port, as passed to slime's --rollout-external-engine-addrs."""
    gpus: int = 0
    """tp x pp from its /server_info (0: it did not answer)."""


def parse_engine_addrs(text: str) -> list[str]:
    """`HOST:PORT[,HOST:PORT...]` (or http://HOST:PORT) as slime's host:port list; LaunchError
    with one line for anything else."""
    addrs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        url = part if "://" in part else f"http://{part}"
        u = urlparse(url.rstrip("/"))
        try:
            port = u.port
        except ValueError:
            port = None
        if u.scheme != "http" or not u.hostname or port is None or u.path not in ("", "/"):
            raise LaunchError(
                f"--engine-addrs {part!r} is not HOST:PORT (e.g. 127.0.0.1:30000; IPv6 in brackets)"
            )
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        addr = f"{host}:{port}"
        if addr not in addrs:
            addrs.append(addr)
    if not addrs:
        raise LaunchError("--engine-addrs names no engine (HOST:PORT[,HOST:PORT...])")
    return addrs


def _server_info(addr: str, timeout: float) -> tuple[dict | None, str]:
    """(the engine's /server_info, "") or (None, why not)."""
    why = ""
    for path in INFO_PATHS:
        try:
            r = httpx.get(f"http://{addr}{path}", timeout=timeout)
        except httpx.HTTPError as e:
            return None, f"{type(e).__name__}: {e}".strip().rstrip(":")
        if r.status_code == 200:
            try:
                body = r.json()
            except ValueError:
                return None, f"{path} is not JSON"
            return (body, "") if isinstance(body, dict) else (None, f"{path} is not an object")
        why = f"{path} answered HTTP {r.status_code}"
    return None, why


def _gpus(info: dict) -> int:
    """The engine's GPUs as slime counts them: num_gpus, else tp x pp."""

    def size(*keys: str) -> int:
        for k in keys:
            try:
                v = int(info.get(k) or 0)
            except (TypeError, ValueError):
                v = 0
            if v > 0:
                return v
        return 1

    gpus = size("num_gpus")
    return (
        gpus
        if info.get("num_gpus")
        else size("tp_size", "tensor_parallel_size") * size("pp_size", "pipeline_parallel_size")
    )


def check_engines(
    addrs: list[str], checks: list[pre.Check], probe: bool = True, timeout: float = PROBE_TIMEOUT
) -> list[ExternalEngine]:
    """Each engine, checked to answer /server_info (a MISSING check with the fix when not)."""
    engines: list[ExternalEngine] = []
    for addr in addrs:
        if not probe:
            engines.append(ExternalEngine(addr, 1))
            continue
        info, why = _server_info(addr, timeout)
        if info is None:
            host, _, port = addr.rpartition(":")
            checks.append(
                pre.Check(
                    f"engine {addr}",
                    False,
                    f"no SGLang engine answers /server_info there ({why})",
                    f"start one: python -m sglang.launch_server --model-path MODEL --host {host} "
                    f"--port {port} (on a CPU: python -m tools.engines.local_engine --model "
                    f"MODEL --host {host} --port {port})",
                )
            )
            engines.append(ExternalEngine(addr))
            continue
        gpus = _gpus(info)
        model = info.get("model_path") or "?"
        checks.append(pre.Check(f"engine {addr}", True, f"SGLang serving {model} ({gpus} GPU(s))"))
        engines.append(ExternalEngine(addr, gpus))
    return engines
