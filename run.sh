#!/usr/bin/env bash
# Train with slime on the environments in train_config.yaml, or run episodes without training.
#   bash run.sh --model Qwen/Qwen3-4B [options] [-- extra slime args]    (bash run.sh --help)
#   bash run.sh --rollout-only --engine-url URL --num-tasks N [options]  (bash run.sh --rollout-only --help)
#   bash run.sh --eval-only --model NAME=URL [--model ...] [options]     (bash run.sh --eval-only --help)
# The work is done by tools/launch/, tools/rollout_only.py and tools/eval/; this picks the Python.
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="python3"
fi
if ! "$PY" -c "import yaml, httpx, pydantic" 2>/dev/null; then
  echo "run.sh: $PY lacks the project's dependencies -> fix: bash setup.sh" >&2
  exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OPENREWARD_DISABLE_UPDATE_CHECK="${OPENREWARD_DISABLE_UPDATE_CHECK:-1}"
for arg in "$@"; do
  [ "$arg" = "--" ] && break
  if [ "$arg" = "--rollout-only" ]; then
    exec "$PY" -m tools.rollout_only "$@"
  fi
  if [ "$arg" = "--eval-only" ]; then
    exec "$PY" -m tools.eval "$@"
  fi
done
exec "$PY" -m tools.launch "$@"
