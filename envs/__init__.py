"""The environments: each an `openreward.environments.Environment`, served over the ORS protocol.

They run under this project's server (`python -m envs.server`), OpenReward's own server and
platform, or in-process.

Modules:
    gsm8k      GSM8K word problems with a calculator tool and a single answer submission
    whodunit   generated murder mysteries with exactly one consistent solution
    haiku      write a 5-7-5 haiku on a topic; structure from CMUdict, optional LLM judge
    registry   names of the local environments and where their classes live (imported on demand)
    options    validating an environment's `options` from train_config.yaml
    play       `python -m envs play ENV`: play one episode by hand, in-process or against a server
    data/      the environments' bundled data (haiku topics)

Subpackages:
    server/        the ORS server (`python -m envs.server`)
    trajectories/  the trajectory store, the rollout-upload API and the web UI

Optional class hooks, found with getattr: `configure(options)` applies train_config.yaml's
`environments.<name>.options` to the class; `ground_truth(task_spec)` gives the label
prepare_tasks.py writes. This package never imports slime; it may import `bridge.config`
(the shared config schema) and `bridge.task`.
"""
