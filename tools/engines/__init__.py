"""Inference engines for machines without a GPU (debugging and tests, not throughput).

Modules:
    local_engine  `python -m tools.engines.local_engine --model PATH`: a Hugging Face model on the
                  CPU behind SGLang's /generate
    tiny_model    `python -m tools.engines.tiny_model DIR`: a tiny random Qwen3 made offline
"""
