"""Trajectories: where finished episodes are stored and read, hosted by the env server.

Modules:
    events    the rollout-upload wire events (`POST /v1/rollouts`), validated into plain dicts
    schema    the SQLite schema: versioned migrations and the connection every user opens
    store     the store: submit() to the writer, the query methods to read
    host_guard one machine at a time on a store (SQLite's WAL): another machine's open is refused
    event_rows what the upload events become as rows (checked before any write)
    writer    the single writer thread: group commit, savepoint per batch; WAL checkpoints
    queries   the reads: runs, one rollout (messages, token arrays), groups, reward series
    rollout_list  a run's rollout list: filters, sorts, keyset pages, the index each walks
    read_pool the shared read connections and piecewise blob reads
    packing   token arrays as packed binary, JSON values as text columns
    tripwires which rollouts tripped which tripwire (group wires matched as rollouts arrive)
    advantages GRPO advantages of a group's rewards, as slime computes them
    group_view a rollout page's GRPO group: samples that train (with advantages), infra
              failures apart; a failed rollout's reason
    api       TrajectoryService: the upload endpoints, a JSON API over the store, the web UI
    webui     server-rendered pages: runs (paged), a run's rollouts, one rollout (provenance,
              tripwires, drift, GRPO group with advantages)
    chart     the reward chart of a run page (inline SVG)
    formats   how pages show stored values (times, rewards; anything odd as text)
    memory    giving memory back after large requests (young GC, malloc_trim; never a full GC)
    evals     evals in the store (`python -m tools.eval`): spec, models, episodes, report
    eval_identity  whether two evals (or two models of one) are the same: the differing leaves
    evalui    the eval pages: the evals, one eval's model comparison, one task across models
    errors    StoreError, SpecMismatch (under envs.errors.EnvsError); ApiReason, the API's refusals
    static/   the pages' templates, stylesheet and script (no CDN)

Served by `python -m envs.server` (roles `all` and `trajectories`); the stock `openreward` SDK
uploads to it when `OPENREWARD_API_URL` points at the server.
"""
