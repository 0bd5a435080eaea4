"""Adapters: other frameworks' environments served as ORS environments over the env server, so the
bridge, prepare_tasks.py, the eval and the trajectory UI work on them unchanged.

Optional extras, imported only when such an environment is configured (envs/registry.py loads
them by name):

    verifiers          a verifiers environment (`pip install -e '.[verifiers]'`, verifiers 0.3:
                       ToolEnv, StatefulToolEnv, SingleTurnEnv, MultiTurnEnv, Rubric)
    verifiers_episode  one verifiers rollout played one assistant message at a time
    openenv            an OpenEnv environment (`pip install -e '.[openenv]'`): reset/step as
                       ORS tools, its task API as splits
    schema_args        tool inputs described by a JSON Schema, checked before the tool runs

Nothing here is imported by the server, the plugin or the tools unless an environment needs it.
"""
