"""The contract: what the plugin, the env server and the tools must agree on, and nothing else.

The ground floor. It imports neither side: `envs/` (the service) and `bridge/` (the plugin slime
loads) stand on it side by side, and the tools (`tools/`) on top of all three.

Modules:
    config            train_config.yaml's schema and loading (`$TRAIN_CONFIG`)
    task              the task a slime sample carries in `metadata` (written by prepare_tasks.py);
                      ORS tool specs as OpenAI function schemas, text of ORS blocks, task labels
    vocab             the closed vocabularies: stop reasons, episode statuses, tool-error kinds,
                      the env server's refusal reasons (requests and tool calls)
    env_report        what an environment reports beside its reward (provenance, tripwires, the
                      reward's parts): the metadata keys the envs write and the plugin reads,
                      read with bounds
    provenance        the hashes and versions both sides write into provenance (16 hex digits)
    trajectory_events the rollout-upload events (`POST /v1/rollouts`) the plugin's sink writes and
                      the trajectory store reads
    errors            ContractError and ConfigError

No I/O beyond reading the config file, no web framework, no torch: importing it is cheap.
tests/test_layout.py enforces the floors from the code's own imports.
"""
