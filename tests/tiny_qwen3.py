"""The tests' tiny random-initialised Qwen3: the product's offline builder,
`tools.engines.tiny_model`.

python tests/tiny_qwen3.py OUT_DIR [--tokenizer DIR]   (same as python -m tools.engines.tiny_model)
"""

from __future__ import annotations

from tools.engines.tiny_model import DEFAULT_TOKENIZER_DIR, SEED, TINY_SHAPE, main, make_tiny_qwen3

__all__ = ["DEFAULT_TOKENIZER_DIR", "SEED", "TINY_SHAPE", "make_tiny_qwen3"]

if __name__ == "__main__":
    raise SystemExit(main())
