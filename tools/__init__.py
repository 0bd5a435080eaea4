"""The tools on top: what uses both the environments and the plugin, never loaded by slime.

Modules and packages:
    launch/         `bash run.sh`: check prerequisites, start services, submit slime through Ray
    rollout_only    `bash run.sh --rollout-only`: the bridge on N tasks against an engine, no slime
    rollout_services  what rollout-only starts: env servers, the CPU or the scripted engine
    rollout_failures  rollout-only's failures shown: envs checked before any episode, a run
                    stopped early when most episodes fail for one infrastructure reason
    eval/           `python -m tools.eval` (`bash run.sh --eval-only`): evaluate and compare models
    engines/        inference engines for a machine without a GPU speaking SGLang's API: the CPU
                    engine, the scripted engine, the tiny model
    slime_cpu       the import shims slime's processes need on a machine without a GPU
    cpu_site/       its `sitecustomize.py`: first on the PYTHONPATH of a `run.sh --no-train` job
                    without a GPU, it installs the shims in every process of the job
    prepare_tasks   `python prepare_tasks.py`: the environments as slime's prompt JSONL
    task_source     where prepare_tasks reads tasks (a local env class, a hosted env), and the one
                    reader of its JSONL rows
    replay          `python -m tools.replay ID`: re-execute a stored episode's tool calls, diff them
    replay_source   where replay reads stored rollouts: the store's file or a server's JSON API
    replay_session  a fresh session of a stored rollout's task: in-process, or on an env server
    replay_compare  one stored rollout replayed and compared call by call: the replay's report
    errors          ToolsError and the tools' error types

Floors (tests/test_layout.py): the tools may import `contract`, `envs` and `bridge`; nothing below
imports the tools. `prepare_tasks.py` and `run.sh` stay at the top of the repository as thin entry
points; `bridge/launch/` keeps the old `python -m bridge.launch.*` commands as aliases for one
release.
"""
