"""run.sh's side: everything that runs on the launching machine or as the Ray job's entrypoint,
never inside slime's rollout process.

Modules:
    launcher        `bash run.sh`: check prerequisites, start services, submit slime's driver to Ray
    __main__        `python -m tools.launch` (what run.sh runs): the launcher's CLI
    prerequisites   what run.sh needs before it can train, each found or named with its fix
    gpus            this machine's GPUs (nvidia-smi, amd-smi, rocm-smi) and what AMD changes
    cluster         the nodes a job runs on, read from Ray's state API or this machine
    layout          the GPU layout (actor nodes x GPUs, rollout GPUs, engines) fitted to a cluster
    modes           --mode sync|async|fully-async: slime's driver and its flags
    resume          which checkpoint --load names given what --save holds (--resume/--no-resume)
    env_servers     the job's env servers: running ones, replicas here, or replicas on Ray
    ray_job         the Ray job's entrypoint on a cluster: env-server replicas as Ray actors around
                    slime
    slime_flags     the flags slime (and the Megatron parser it wraps) accepts, read from its
                    sources
    services        local services run.sh starts when they are not running: env server, CPU engine

Its errors are in `tools/errors.py`. Like every tool it may import `contract`, `envs` and
`bridge`; nothing below imports it.
"""
