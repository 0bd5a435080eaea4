"""run.sh's side: everything that runs on the launching machine or as the Ray job's entrypoint,
never inside slime's rollout process.

Modules (one data flow: options -> plan -> printed by --dry-run, or executed):
    launcher        `bash run.sh`: parse, plan, print or execute; its exit code
    __main__        `python -m tools.launch` (what run.sh runs): the launcher's CLI
    cli             run.sh's options, their defaults, and the values refused before planning
    slime_names     slime's names of run.sh's options, and what becomes of slime flags after `--`
    paths           every path run.sh hands on is absolute (relative to where it was started)
    model_source    --model: a local directory, the Hugging Face cache, or a Hub download
    plan            build_plan: every check and command of a launch (LaunchPlan), format_plan
    eval_plan       the eval files and interval a training run evaluates (--eval-data, prepared)
    execute         carry a plan out: env servers, Ray head, `ray job submit`; stop them on exit
    leftovers       after the job: deliver the trajectories its sink left on disk to the store
    prerequisites   what run.sh needs before it can train, each found or named with its fix
    cluster_plan    where the job runs: the cluster read, the layout fitted, the vendor, the head
    gpus            this machine's GPUs (nvidia-smi, amd-smi, rocm-smi) and what AMD changes
    cluster         the nodes a job runs on, read from Ray's state API or this machine
    layout          the GPU layout (actor nodes x GPUs, rollout GPUs, engines) fitted to a cluster
    modes           --mode sync|async|fully-async: slime's driver and its flags
    resume          which checkpoint --load names given what --save holds (--resume/--no-resume)
    env_servers     the job's env servers: running ones, replicas here, or replicas on Ray
    filesystems     whether a path is on a network filesystem (the store's, on a cluster)
    replica_placement  the node of each env-server replica on a Ray cluster, decided up front
    job             the Ray job: its id, environment, TRAIN_CONFIG, script and submit command
    slime_args      the flags run.sh gives slime's driver, checked against the checkout
    model_args      the Megatron model flags: --model-args, else slime's scripts/models/<model>.sh
    ray_job         the Ray job's entrypoint on a cluster: env-server replicas as Ray actors around
                    slime
    slime_flags     the flags slime (and the Megatron parser it wraps) accepts, read from its
                    sources
    services        local services run.sh starts when they are not running: env server, CPU engine

Its errors are in `tools/errors.py`. Like every tool it may import `contract`, `envs` and
`bridge`; nothing below imports it.
"""
