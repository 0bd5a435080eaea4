"""A tiny random-initialised Qwen3 saved with the real Qwen3 tokenizer, for CPU tests.

`make_tiny_qwen3(dir)` writes a directory that `AutoTokenizer.from_pretrained(dir)` and
`AutoModelForCausalLM.from_pretrained(dir)` load offline. Weights are seeded, so two builds
are identical. The model is untrained: it emits arbitrary tokens, which is all the engine
tests need (real shapes, real chat template, real logprobs).

    python tests/tiny_qwen3.py OUT_DIR [--tokenizer DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER_DIR = Path(
    os.environ.get("QWEN3_TOKENIZER_DIR", REPO / ".cache" / "qwen3-tokenizer")
)
SEED = 1234

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


def make_tiny_qwen3(out_dir: str | Path, tokenizer_dir: str | Path = DEFAULT_TOKENIZER_DIR) -> Path:
    """Build (or reuse) the tiny model + tokenizer in `out_dir`; returns the directory."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    if (
        (out / "config.json").is_file()
        and (out / "model.safetensors").is_file()
        and (out / "tokenizer.json").is_file()
    ):
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        eos_token_id=im_end,
        pad_token_id=pad,
        bos_token_id=None,
        torch_dtype="float32",
        **TINY_SHAPE,
    )
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Write a tiny random Qwen3 + real tokenizer to a directory"
    )
    ap.add_argument("out_dir")
    ap.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER_DIR))
    args = ap.parse_args()
    print(make_tiny_qwen3(args.out_dir, args.tokenizer))


if __name__ == "__main__":
    main()
