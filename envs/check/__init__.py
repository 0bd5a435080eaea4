"""`python -m envs check NAME...`: is an environment deterministic, bounded and safe to serve?

Plays each environment through the real env server (started on a free loopback port) and prints
one line per check, with the fix when it fails; exit 0 only when every check passes.

Modules:
    runner  the command: starts the server, runs the checks per environment, prints the lines
    checks  the checks (options, tasks, tool_schemas, finishes, isolation, budget, bad_input,
            rewards, provenance), each a Result with the fix
    client  plain ORS over HTTP, one request at a time, every outcome visible (JSON answers)
    fuzz    plausible arguments that follow a tool's schema, and hostile ones
"""
