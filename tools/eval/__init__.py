"""`python -m tools.eval`: evaluate and compare models on the environments.

Models are SGLang /generate endpoints (the bridge's own token-exact episode), OpenAI-compatible
/v1/chat/completions endpoints with native tool calling, or the local CPU engine; every kind
plays the same episode loop (`bridge.episode.Episode`), only the model step differs.

Modules:
    __main__    the CLI (also `bash run.sh --eval-only`)
    evaluate    one eval from start to report: tasks, resume, preflight, episodes, report
    spec        the models (`--model NAME=TARGET`), sampling settings, and an eval's identity
    tasks       the tasks: each env's eval split (as prepare_tasks.py picks it) or a task file
    chat_model  the OpenAI chat model step: messages in and out, tool calls parsed by the server
    runner      running the missing episodes of every model, each stored as it finishes
    stats       unbiased pass@k, bootstrap CIs over tasks, the paired comparison of two models
    report      scores and comparisons from the stored episodes; terminal table, Markdown, JSON

The eval's state is the trajectory store (`envs/trajectories/evals.py`); the web UI's comparison
page (`/evals/<id>`) reads it there.
"""
