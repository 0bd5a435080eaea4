"""`python -m tools.eval` (and `bash run.sh --eval-only`): evaluate and compare models.

    python -m tools.eval --model base=http://127.0.0.1:30000 \\
        --model trained=http://127.0.0.1:30001 --tokenizer DIR --config train_config.yaml \\
        --k 4 --num-tasks 50
"""

from __future__ import annotations

import argparse
import signal
import sys

from tools.errors import EvalError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Evaluate models on the environments of train_config.yaml (each env's eval_split) or on a task
file, k samples per task, and compare them: per-environment mean reward, solve rate, pass@k,
turns, tool calls and error rates with 95% bootstrap CIs, and paired differences between models.
Every episode is stored in the trajectory store (--db) under the run <eval>/<model>; an
interrupted eval resumes where it stopped, and rerunning a finished one prints its report.
"""

MODEL_HELP = """\
NAME=TARGET[,key=value...], repeatable. TARGET: http://host:port (an SGLang-compatible
/generate endpoint, token-exact: the bridge's own episode), http://host:port/v1 (an
OpenAI-compatible /v1/chat/completions endpoint with native tool calling), local:PATH (the CPU
engine on a Hugging Face model dir, for debugging); generate:URL and openai:URL force the kind.
Settings: tokenizer=DIR (/generate and local), model=ID (OpenAI: the served model; default its
only one), api_key_env=VAR (OpenAI: send $VAR as bearer key; nothing is sent otherwise)."""


def parse_options(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
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
    a("--name", help="eval name (default: eval-<hash of the spec and model names>)")
    a("--db", default="runs/trajectories.db", help="trajectory store (default: %(default)s)")
    a("--out", metavar="DIR", help="report directory (default: runs/eval/<name>)")
    a("--env-server", metavar="URL", help="env server for local envs (default: the config's)")
    a(
        "--retry-errors",
        action="store_true",
        help="run again the stored episodes that failed (env or engine errors)",
    )
    a("--json", action="store_true", help="print the report as JSON (no progress bars)")
    a("--serve", action="store_true", help="keep the web UI with the comparison page up afterwards")
    opts = ap.parse_args(argv)
    if not opts.model:
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


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM stops the eval like Ctrl-C: finished episodes are kept, the rest resume later."""
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(sys.argv[1:] if argv is None else argv)
    from tools.eval.evaluate import evaluate

    try:
        return evaluate(opts)
    except EvalError as e:
        print(f"eval: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("eval: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    raise SystemExit(main())
