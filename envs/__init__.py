"""The environments: each an `openreward.environments.Environment`, served over the ORS protocol.

They run under this project's server (`python -m envs.server`), OpenReward's own server and
platform, or in-process.

Modules:
    gsm8k      GSM8K word problems with a calculator tool and a single answer submission
    gsm8k_data GSM8K data: which copy the gsm8k environment reads, and reading it
    whodunit/  generated murder mysteries with exactly one consistent solution (a package:
               options, names, logic, case, text, scoring, env)
    haiku/     write a 5-7-5 haiku on a topic; structure from CMUdict, topic words, optional LLM
               judge (a package: syllables, topics, relevance, judge, env)
    reporting  ReportingEnvironment: provenance on every tool output, tripwires when the episode
               ends
    tripwires  Tripwire declarations: cheap invariants of an honest success (never change the
               reward)
    provenance an env's version (package version + hash of its code and data), task-spec hashes
    registry   environment names -> classes: the built-in three, names installed packages register
               (entry point group slime_envs.environments), module:Class (imported on demand)
    options    validating an environment's `options` from train_config.yaml
    play       `python -m envs play ENV`: play one episode by hand, in-process or against a server
               (`python -m envs replay` is an alias of `python -m tools.replay` for one release)
    scaffold   `python -m envs new NAME`: write a minimal environment of one's own (templates/)
    errors     the error tree: EnvsError, its subclasses here and where the subpackages' live
    data/      the environments' bundled data (haiku topics and their on-topic words; GSM8K, MIT)
    templates/ the files `python -m envs new` writes

Subpackages:
    server/        the ORS server (`python -m envs.server`)
    trajectories/  the trajectory store, the rollout-upload API and the web UI
    check/         `python -m envs check NAME...`: the conformance check, through the server
    adapters/      verifiers and OpenEnv environments served over ORS (optional extras)

Optional class hooks, found with getattr: `configure(options)` applies train_config.yaml's
`environments.<name>.options` to the class; `ground_truth(task_spec)` gives the label
prepare_tasks.py writes; `warm_up()` loads data when the env server starts; `session_toolsets`
names the SDK toolsets clients may add to a session (default none). The envs here subclass
`ReportingEnvironment` and declare `TRIPWIRES` (checked by `check_tripwires(calls)`),
`DATA_FILES` (hashed into their version), `REWARD_RANGE` (what `python -m envs check` holds
their rewards to; a plugin environment does the same to pass the check) and `REWARD_PARTS` (the
parts of the reward their tools report in `metadata["reward_parts"]`). Floors: this
package imports only `contract` (the config schema, vocabularies, report keys, trajectory
events), never the plugin (`bridge`), the tools or slime. tests/test_layout.py enforces it.
"""
