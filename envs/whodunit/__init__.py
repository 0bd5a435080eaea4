"""WhoDunIt: procedurally generated murder mysteries with exactly one consistent solution.

A case is a hidden solution (who, what, where and optionally why) plus clues and suspect
statements. Every clue and statement is a small predicate over candidate solutions, so the
puzzle is machine-checkable:

- clues are true facts;
- innocent suspects always tell the truth; the killer tells exactly `lying_statements` lies
  among their own statements.

Scoring: `submit_answer` ends the case; each correct part earns 1/3 (1/4 when a motive is
asked). Tripwire: `solved_without_evidence`.

Modules:
    options  the difficulty knobs of a case and the split sizes (train_config.yaml's options)
    names    the pools of names a case draws from
    logic    candidate solutions, predicates (clues, statements), consistency checks and bitmasks
    case     a case (names, solution, clues, statements) and its generator
    text     the sentences a case shows: prompt, clues, statements, tool listings, the lie rule
    scoring  matching an accusation against the solution, part by part
    env      the environment: six information tools and `submit_answer`

The env's version (envs/provenance.py) hashes every module of this package.
"""

from envs.whodunit.case import Case, case_seed, generate_case, iter_cases
from envs.whodunit.env import SOLVED_WITHOUT_EVIDENCE, AnswerInput, NoInput, WhoDunIt
from envs.whodunit.logic import (
    CATEGORY_NAMES,
    WHAT,
    WHERE,
    WHO,
    WHY,
    Pred,
    Solution,
    Space,
    consistent,
)
from envs.whodunit.names import (
    LOCATION_POOL,
    MOTIVE_POOL,
    PLACE_POOL,
    SUSPECT_POOL,
    VICTIM_POOL,
    WEAPON_POOL,
    WEATHER_POOL,
)
from envs.whodunit.options import (
    DEFAULT_DIFFICULTY,
    MAX_SPLIT_SIZE,
    SEED_OFFSET,
    SPLITS,
    Difficulty,
    WhoDunItOptions,
)
from envs.whodunit.scoring import normalize_name, score_answer

__all__ = [
    "CATEGORY_NAMES",
    "DEFAULT_DIFFICULTY",
    "LOCATION_POOL",
    "MAX_SPLIT_SIZE",
    "MOTIVE_POOL",
    "PLACE_POOL",
    "SEED_OFFSET",
    "SOLVED_WITHOUT_EVIDENCE",
    "SPLITS",
    "SUSPECT_POOL",
    "VICTIM_POOL",
    "WEAPON_POOL",
    "WEATHER_POOL",
    "WHAT",
    "WHERE",
    "WHO",
    "WHY",
    "AnswerInput",
    "Case",
    "Difficulty",
    "NoInput",
    "Pred",
    "Solution",
    "Space",
    "WhoDunIt",
    "WhoDunItOptions",
    "case_seed",
    "consistent",
    "generate_case",
    "iter_cases",
    "normalize_name",
    "score_answer",
]
