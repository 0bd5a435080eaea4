"""`python -m tools.eval` (and `bash run.sh --eval-only`): evaluate and compare models.

    python -m tools.eval --model base=http://127.0.0.1:30000 \\
        --model trained=http://127.0.0.1:30001 --tokenizer DIR --config train_config.yaml \\
        --k 4 --num-tasks 50
    python -m tools.eval --rescore EVAL      # the stored episodes, scored by today's env code

SIGTERM stops it as Ctrl-C does (finished episodes are kept), whatever the shell; a bad flag is
one line, never argparse's usage.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, NoReturn

from tools.errors import EvalError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Evaluate models on the environments of train_config.yaml (each env's eval_split) or on a task
file, k samples per task, and compare them: per-environment mean reward, solve rate, pass@k,
turns, tool calls, error rates and each reward part the env reports, with 95% bootstrap CIs, and
paired differences between models (per part too). Every episode is stored in the trajectory
store (--db) under the run <eval>/<model>; an interrupted eval resumes where it stopped, and
rerunning a finished one prints its report. An eval is its spec and each model's identity
(target, served model, tokenizer, checkpoint, sampling args): a model pointed elsewhere is a new
eval (under --name: refused, naming what changed). Writes report.json/.md, scores.csv,
comparisons.csv, episodes.jsonl (and .parquet with pyarrow) to --out. SIGTERM stops it like
Ctrl-C; the servers it started stop with it.
"""

MODEL_HELP = """\
NAME=TARGET[,key=value...], repeatable. TARGET: http://host:port (an SGLang-compatible
/generate endpoint, token-exact: the bridge's own episode), http://host:port/v1 (an
OpenAI-compatible /v1/chat/completions endpoint with native tool calling), local:PATH (the CPU
engine on a Hugging Face model dir, for debugging); generate:URL and openai:URL force the kind.
Settings: tokenizer=DIR (/generate and local), model=ID (OpenAI: the served model; default its
only one), api_key_env=VAR (OpenAI: send $VAR as bearer key; nothing is sent otherwise)."""

SAMPLING_HELP = """\
JSON or NAME=JSON, repeatable: engine sampling parameters sent as they are, in /generate's
sampling_params or the chat completion's body (e.g. '{"top_k": 20, "min_p": 0.05}'); NAME=JSON
for one model only (over the shared ones). They override --temperature/--top-p; the eval's own
budget keys (max_new_tokens, max_tokens, ...) are refused. Part of the eval's identity."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`eval: --k: must be at least 1, got 0`), never the usage."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        print(f"eval: {message} (python -m tools.eval --help)", file=sys.stderr)
        raise SystemExit(2)


def parse_options(argv: list[str]) -> argparse.Namespace:
    ap = _Parser(
        prog="python -m tools.eval",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = ap.add_argument
    a("--eval-only", action="store_true", help=argparse.SUPPRESS)  # run.sh passes it through
    a("--model", action="append", default=[], metavar="NAME=TARGET", help=MODEL_HELP)
    a(
        "--tokenizer",
        metavar="DIR",
        help=(
            "tokenizer and chat template of /generate models (override per model with ,tokenizer=)"
        ),
    )
    a("--config", default="train_config.yaml", help="train config (default: %(default)s)")
    a(
        "--tasks",
        metavar="FILE",
        help="a prepare_tasks.py JSONL file instead of the config's eval splits",
    )
    a("--envs", metavar="A,B", help="only these environments (default: all with an eval split)")
    a(
        "--num-tasks",
        type=_positive,
        metavar="N",
        help="a seeded subset of N tasks per environment (default: all; num_eval_samples caps it)",
    )
    a("--k", type=_positive, default=1, help="samples per task (default: %(default)s)")
    a("--seed", type=int, default=42, help="task subset seed (default: %(default)s)")
    a("--temperature", type=float, default=1.0, help="(default: %(default)s)")
    a("--top-p", type=float, default=1.0, help="(default: %(default)s)")
    a("--greedy", action="store_true", help="temperature 0, top-p 1")
    a(
        "--max-tokens",
        type=_positive,
        default=4096,
        metavar="N",
        help="response token budget per episode, also each turn's cap (default: %(default)s)",
    )
    a("--max-context-len", type=_positive, metavar="N", help="context budget per episode")
    a(
        "--solve-threshold",
        type=float,
        metavar="R",
        help="an episode is solved at reward >= R (default: the task's max_reward)",
    )
    a(
        "--concurrency",
        type=_positive,
        default=16,
        help="episodes in flight per model (default: %(default)s)",
    )
    a("--name", help="eval name (default: eval-<hash of the spec and the models' identities>)")
    a("--db", default="runs/trajectories.db", help="trajectory store (default: %(default)s)")
    a("--out", metavar="DIR", help="report directory (default: runs/eval/<name>)")
    a("--env-server", metavar="URL", help="env server for local envs (default: the config's)")
    a(
        "--retry-errors",
        action="store_true",
        help="run again the stored episodes that failed (env or engine errors)",
    )
    a(
        "--sampling-args",
        action="append",
        default=[],
        metavar="JSON|NAME=JSON",
        help=SAMPLING_HELP,
    )
    a("--json", action="store_true", help="print the report as JSON (no progress bars)")
    a("--serve", action="store_true", help="keep the web UI with the comparison page up afterwards")
    a(
        "--wandb-project",
        metavar="PROJECT",
        help="also log the report's tables and per-env metrics to W&B (offline without a key)",
    )
    a("--wandb-group", metavar="GROUP", help="W&B group of that run")
    a(
        "--rescore",
        metavar="EVAL",
        help=(
            "re-score the stored episodes of EVAL (name or id) with the current environment code, "
            "in-process and without any model, and report what changed (exit 1 when anything did)"
        ),
    )
    opts = ap.parse_args(argv)
    if not opts.model and not opts.rescore:
        ap.error("give at least one --model NAME=TARGET")
    return opts


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM stops the eval like Ctrl-C: finished episodes are kept, the rest resume later.

    It raises KeyboardInterrupt itself (as Python's own SIGINT handler does): re-raising SIGINT
    does nothing in a background job of a non-interactive shell, where SIGINT is ignored. While
    episodes run, the event loop cancels them instead (tools/eval/evaluate.py)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(sys.argv[1:] if argv is None else argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        if opts.rescore:
            from tools.eval.rescore import rescore

            return rescore(opts)
        from tools.eval.evaluate import evaluate

        return evaluate(opts)
    except EvalError as e:
        print(f"eval: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("eval: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
