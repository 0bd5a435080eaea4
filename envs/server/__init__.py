"""The ORS env server: serves Environment classes over the OpenReward wire protocol, fast.

`python -m envs.server --envs gsm8k,whodunit,haiku` speaks the protocol exactly as the stock
`openreward` client uses it (the same paths, JSON bodies and SSE framing as the SDK's own
`openreward.environments.Server`), runs every tool call through the SDK's Environment
machinery, and also hosts the trajectory service (`envs/trajectories/`).

Modules:
    __main__    the CLI: flags, loading the environments and the trajectory service, uvicorn
    app         `create_app`: the ORS router in front of a FastAPI app carrying the services
    router      the ORS router: raw ASGI in front of the app, API key, errors as typed answers
    routes      the route table: each ORS path's method and typed handler
    context     what every handler reads: envs, settings, sessions, metrics, budget; lookups
    lifecycle   a session's life: /create_session, /create (toolsets), /ping, /delete
    catalog     session-free answers: environments, version, metrics, splits, tools, tasks
    session_views  a session's prompt, messages and task tools
    calls       tool calls and score_group under the call budget; stopped calls leave no trace
    rollback    an environment's state before a call, put back when the server stops the call
    streaming   answering a call: SSE (task_id, keepalives, result) or plain JSON; resume
    wire        the wire format: requests, JSON and SSE bodies, X-Secrets, typed body fields
    served      environment classes checked as the SDK server checks them, static answers cached
    sessions    the session table: live environment instances, idle reaping, sessions per client
    fairness    the loop shared fairly between clients: one ahead of the others waits its turn
    budget      a per-call CPU budget for code on the event loop (SIGALRM ticker, GC excluded)
    connections slow, idle and greedy clients: header/body/send timeouts, header size cap,
                connection caps for the server and per client
    openapi     the OpenAPI schema of every route (`GET /openapi.json`)
    metrics     counters and a latency histogram, rendered as Prometheus text (`GET /metrics`);
                CallStatus, the labels of a tool call's outcome
    errors      OrsError (the ORS error shape), its OrsReason vocabulary, the other error types

Hardening: bad input gets a typed 4xx in the ORS error shape
`{"ok": false, "error": msg, "reason": kind, "detail": msg}` (`detail` is what the stock client
shows); an exception inside an environment fails that call only; idle sessions are reaped;
`--max-sessions` answers 503 with Retry-After and one client holds at most 3/4 of them;
`--api-key` guards everything but /health; a call's code gets `--tool-budget` seconds of CPU on
the event loop (a stopped call is the server's `budget_exceeded`, never the model's fault);
slow clients time out and connections are capped, per client too; toolsets only when the env
class lists them in `session_toolsets`.

Wire details beyond the SDK server: tool-level refusals (not_found, input_validation,
episode_finished) travel inside the SSE result exactly as the SDK sends them (the stock client
turns them into `ToolCallError(reason)`); a client that does not send
`Accept: text/event-stream` gets the same JSON as the body with a typed status instead
(404/422/409, 500 for an env crash). Bare paths (`/call`, `/prompt`, `/create` without
`env_name`), which the stock client uses when no variant is given, are routed by the session,
else by the client's `X-Deployment` header, else to the first environment: the SDK server
would redirect them all to its first environment.

This package never imports slime; it reads `contract.config` for the shared train_config schema.
"""

import os

# The SDK logs three lines per tool call at INFO; its loggers read this when first imported,
# so it is set before any module of this package imports openreward.
os.environ.setdefault("OPENREWARD_LOG_LEVEL", "ERROR")
