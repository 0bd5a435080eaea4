"""The slime plugin: only what slime loads into its rollout process.

A custom generate function that plays one whole tool-calling episode token-in/token-out
against SGLang and an ORS env server, reduces per-turn rewards, and hands the trajectory to a
sink; plus W&B metrics hooks. The hooks, as slime's customization page gives them:

    --custom-generate-function-path bridge.generate.generate
        async def generate(args, sample, sampling_params, evaluation=False) -> Sample
    --custom-rollout-log-function-path bridge.metrics.log_rollout
        def log_rollout(rollout_id, args, samples, rollout_extra_metrics, rollout_time) -> bool
    --custom-eval-rollout-log-function-path bridge.metrics.log_eval_rollout
        def log_eval_rollout(rollout_id, args, data, extra_metrics) -> bool
    --dynamic-sampling-filter-path bridge.filters.drop_infra_failures
        def drop_infra_failures(args, samples, **kwargs) -> DynamicFilterOutput | bool
    --rollout-function-path bridge.fully_async.generate_rollout_fully_async   (fully-async mode)
        def generate_rollout_fully_async(args, rollout_id, data_source, evaluation=False)
    --eval-function-path bridge.fully_async.eval_rollout                      (fully-async mode)
        def eval_rollout(args, rollout_id, data_source=None, evaluation=True)

Modules (one data flow: task -> session -> turns -> sample -> trajectory):
    generate         slime's custom generate hook; failures never raise into slime's rollout loop
    play             one sample's episode tries: resumed or new, replayed when lost to the infra
    outcome          an episode's outcome written into slime's Sample (METADATA_KEYS), placeholders
    rollout_process  what a rollout process keeps between calls: config, renderers, engine clients
    trajectory_handoff  finished episodes handed to the trajectory sink (never waits, never raises)
    episode          the multi-turn loop of one episode: task -> session -> turns -> model context;
                     one loop for every kind of model, only the model step differs
    model_step       the model's side of an episode: ModelTurn and the ModelStep protocol
    token_model      TokenModel: the model step on SGLang's /generate, token-exact (slime trains it)
    partial          episodes suspended by slime's abort under --partial-rollout, resumed later
    fully_async      slime's fully-async mode: infra failures and engine aborts handed back to its
                     worker (requeued), a lasting outage stopped, eval on the worker's loop
    slime_state      slime's rollout control state (its abort), read without importing slime
    filters          slime's dynamic-sampling filter: groups with an infra failure never train
    tokens           token, loss-mask and logprob accounting for one episode
    sample           slime's Sample across versions: the ledger and replay fields written into it
    slime_types      slime's Sample and args as typing Protocols (the hook boundary, no import)
    chat             chat-template rendering: the first prompt and the token deltas between turns
    toolcalls        parse one assistant turn (Qwen3/Hermes): thinking, text, <tool_call> blocks
    rewards          the one place where per-turn tool rewards become a sample's scalar reward
    engine           token-in/token-out client for SGLang's /generate
    env_seconds      the $BRIDGE_* durations (replay window, engine retry, keepalive), one parser
    env_client       the env session for a task: hosted (env_hosted) or on our servers (env_local)
    env_session      the EnvSession protocol, ToolResult, the retry policy, server pinning
    env_local        a session on our env servers over lean HTTP + SSE (retries, resumable calls)
    env_hosted       a session on a hosted OpenReward environment through the openreward SDK
    ors_sse          ORS server-sent events (task_id, chunk*, end), incremental or in one piece
    http11           a small keep-alive HTTP/1.1 client for plain-http servers on the cluster
    errors           the error tree: BridgeError and its subclasses, each with its stdlib base
    trajectory       a finished episode as the bridge hands it to a trajectory sink, and its
                     builder (training and eval)
    provenance       what produced a trajectory: env/task/tokenizer/sampling/weights/bridge versions
    drift            drift forensics: where the token context diverged, the two token runs decoded
    trajectory_sink  the sink for a config (one per process and loop): uploader or disabled
    trajectory_codec finished episodes as OpenReward rollout events; journal and spool lines
    trajectory_uploader  episodes -> journal -> batches -> a server, spooled to disk meanwhile
    trajectory_spool the sink's files: a journal of submitted episodes, a spool of undelivered ones
    owned_files      which process owns a spool file: the one holding its lock (across hosts)
    metrics          slime's rollout-log hooks: per-environment episode metrics to W&B

Floors: the plugin imports only `contract` (the config schema, vocabularies, task metadata, report
keys, trajectory events), never `envs` or `tools`; importing `bridge` pulls in nothing (slime
imports `bridge.generate` in its rollout process). tests/test_layout.py enforces both.
`bridge/launch/` holds only aliases of the old `python -m bridge.launch.*` commands (one release).
"""
