"""Inference engines for machines without a GPU (debugging, smoke tests and the tests' loop; not
throughput). Every one speaks SGLang's API through one schema and one server.

Modules:
    sglang_api    SGLang's HTTP API as slime's loop and the bridge call it: the request/response
                  schema, /server_info, /model_info, /v1/loads (one copy for every engine)
    server        the HTTP server around a backend: aborts, pause/continue, loads, weight
                  versions, flush_cache; a backend only generates
    local_model   a Hugging Face causal LM generating on the CPU (sampling, logprobs, KV reuse)
    local_engine  `python -m tools.engines.local_engine --model PATH`: the CPU engine (`--engine
                  local`): local_model behind the server
    scripted      `python -m tools.engines.scripted`: no model, a fixed player of the three
                  environments with real tool calls (`bash run.sh --rollout-only --engine scripted`)
    tiny_model    `python -m tools.engines.tiny_model DIR`: a tiny random Qwen3 made offline

tests/sglang_stub.py (the tests' scripted engine) is this server with a scripted backend.
"""
