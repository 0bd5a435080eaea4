"""run.sh's side: everything that runs on the launching machine, never inside slime's rollout process.

Modules:
    launcher        `bash run.sh`: check prerequisites, start services, submit slime's train.py to Ray
    __main__        `python -m bridge.launch` (what run.sh runs): the launcher's CLI
    prerequisites   what run.sh needs before it can train, each found or named with its fix
    slime_flags     the flags slime (and the Megatron parser it wraps) accepts, read from its sources
    services        local services run.sh starts when they are not running: env server, CPU engine
    rollout_only    `bash run.sh --rollout-only`: the bridge on N tasks against an engine, no training
    task_source     where prepare_tasks.py reads tasks: a local env class, or a hosted OpenReward env
    local_engine    `python -m bridge.launch.local_engine`: a CPU debugging engine speaking /generate

This package may import `envs/` (task_source reads local env classes in-process) and the
plugin modules in `bridge/`; nothing in the plugin imports it.
"""
