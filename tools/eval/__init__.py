"""`python -m tools.eval`: evaluate and compare models on the environments.

Models are SGLang /generate endpoints (the bridge's own token-exact episode), OpenAI-compatible
/v1/chat/completions endpoints with native tool calling, or the local CPU engine; every kind
plays the same episode loop (`bridge.episode.Episode`), only the model step differs.

Modules:
    __main__    the CLI (also `bash run.sh --eval-only`): one-line flag errors, SIGTERM as Ctrl-C
    plan        everything decided before anything is contacted: models, tasks, spec, name
    evaluate    one eval from start to report: resume, preflight, episodes, report, exports
    spec        the models (`--model NAME=TARGET`), sampling settings and arguments, the spec
    identity    which model was evaluated: target, served model, tokenizer, checkpoint
    tasks       the tasks: each env's eval split (as prepare_tasks.py picks it) or a task file
    services    env servers, CPU engines and the web UI started for exactly the eval's life
    chat_model  the OpenAI chat model step: messages in and out, tool calls parsed by the server
    runner      running the missing episodes of every model, each stored as it finishes
    stats       unbiased pass@k, bootstrap CIs over tasks, the paired comparison of two models
    report      scores, reward parts and comparisons from the stored episodes (JSON-able)
    render      the report as a terminal table, Markdown and CSV
    exports     the files in --out: report.json/.md, scores/comparisons CSV, episodes JSONL/Parquet
    wandb_log   `--wandb-project`: the report's metrics and tables in W&B (offline without a key)
    rescore     `--rescore EVAL`: the stored episodes scored again by today's env code, no model

The eval's state is the trajectory store (`envs/trajectories/evals.py`); the web UI's comparison
page (`/evals/<id>`) reads it there.
"""
