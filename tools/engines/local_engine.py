"""The CPU engine: a Hugging Face model behind SGLang's API, for rollout-only runs and debugging
without a GPU (not for training throughput).

    python -m tools.engines.local_engine --model PATH_OR_HUB_NAME [--host 127.0.0.1] [--port 30000]
        [--device cpu] [--dtype float32] [--threads N] [--weight-version default]

The model (`tools.engines.local_model`) answers token-in/token-out `POST /generate` with real
sampling and per-token logprobs; one request runs at a time on a worker thread (others queue),
so the HTTP loop never blocks. The server around it (`tools.engines.server`) speaks the rest of
SGLang's API that slime's loop calls: `/server_info`, aborts, loads, pause/continue, weight
versions; so the engine can also stand behind slime's router as an external engine
(`bash run.sh --no-train --engine-addrs HOST:PORT`).

torch is an optional dependency (`pip install 'slime-envs[local]'`); this module imports
without it and only fails when an engine is actually started.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tools.engines.local_model import LocalModel, load_model
from tools.engines.server import EngineServer, GenerateCall, serve
from tools.engines.sglang_api import Generation

log = logging.getLogger(__name__)

BANNER = (
    "tools.engines.local_engine: DEBUGGING ENGINE - one request at a time on {device}; "
    "not for training throughput"
)


class LocalBackend:
    """A LocalModel on one worker thread: requests queue in arrival order."""

    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.model_path = model.model_path
        self.tokenizer: Any = model.tokenizer
        self.vocab_size: int | None = model.vocab_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-engine")
        self.queued = 0
        """Calls waiting for the worker thread (SGLang's waiting requests)."""

    async def generate(self, call: GenerateCall) -> Generation:
        self.model.check(call.request)
        loop = asyncio.get_running_loop()
        waiting = [True]

        def dequeue() -> None:  # on the loop
            if waiting[0]:
                waiting[0] = False
                self.queued -= 1

        def work() -> Generation:
            loop.call_soon_threadsafe(dequeue)
            return self.model.generate(call.request, call.cancel)

        self.queued += 1
        try:
            return await loop.run_in_executor(self._executor, work)
        finally:
            dequeue()

    def flush_cache(self) -> None:
        self._executor.submit(self.model.prefix_cache.clear).result()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: load the model, print the debugging banner, serve."""
    ap = argparse.ArgumentParser(
        prog="python -m tools.engines.local_engine",
        description="CPU debugging engine speaking SGLang's API",
    )
    ap.add_argument("--model", required=True, help="local model directory or hub name")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"]
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument(
        "--weight-version", default="default", help="reported as meta_info.weight_version"
    )
    ap.add_argument(
        "--prefix-cache",
        type=int,
        default=2,
        metavar="N",
        help="keep the KV cache of the last N requests to reuse shared prefixes (0 = off)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(BANNER.format(device=args.device), flush=True)
    try:
        import torch
    except ImportError:
        print(
            "tools.engines.local_engine: torch is not installed: pip install 'slime-envs[local]'",
            file=sys.stderr,
        )
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        model = load_model(
            args.model, device=args.device, dtype=args.dtype, prefix_cache_entries=args.prefix_cache
        )
    except RuntimeError as e:
        print(f"tools.engines.local_engine: {e}", file=sys.stderr)
        return 2
    url = f"http://{args.host}:{args.port}"
    server = EngineServer(
        LocalBackend(model),
        public_url=url,
        weight_version=args.weight_version,
    )
    serve(
        server, args.host, args.port, f"tools.engines.local_engine: serving {args.model} on {url}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
