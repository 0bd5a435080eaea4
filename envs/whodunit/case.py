"""A case: names, the hidden solution, clues and statements, and how a case is generated.

The generator searches the whole solution space (as bitmasks over every candidate tuple) and
adds clues until exactly one candidate is consistent, then drops clues that are not needed.
`Case.solutions()` re-checks a case by plain enumeration, independent of the bitmasks.
Cases are deterministic for (split, index); train and test draw from disjoint seed ranges.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from envs.whodunit.logic import WHAT, WHERE, WHO, WHY, Pred, Solution, Space, consistent
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
)
from envs.whodunit.text import CaseText


@dataclass(frozen=True)
class Case(CaseText):
    """One generated mystery: names, hidden solution, clues and statements (all as predicates)."""

    seed: int
    difficulty: Difficulty
    victim: tuple[str, str]
    place: str
    weather: str
    suspects: tuple[tuple[str, str], ...]
    weapons: tuple[str, ...]
    locations: tuple[str, ...]
    motives: tuple[str, ...]  # empty when no motive is asked
    solution: Solution
    clues: tuple[Pred, ...]
    statements: tuple[tuple[Pred, ...], ...]  # per suspect, in suspect order

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        return (
            len(self.suspects),
            len(self.weapons),
            len(self.locations),
            max(1, len(self.motives)),
        )

    def solutions(self, clues: bool = True, statements: bool = True) -> list[Solution]:
        """Every candidate consistent with the clues and statements, by exhaustive enumeration.

        `clues=False` / `statements=False`: what someone who never read them can still rule out.
        """
        lies = self.difficulty.lying_statements
        known_clues = self.clues if clues else ()
        known_statements = self.statements if statements else ()
        w, x, y, z = self.sizes
        return [
            sol
            for sol in itertools.product(range(w), range(x), range(y), range(z))
            if consistent(sol, known_clues, known_statements, lies)
        ]

    def answer(self) -> dict[str, str]:
        """The solution as names (who, what, where, and why when a motive is asked)."""
        who, what, where, why = self.solution
        out = {
            "who": self.suspects[who][0],
            "what": self.weapons[what],
            "where": self.locations[where],
        }
        if self.motives:
            out["why"] = self.motives[why]
        return out


def case_seed(split: str, index: int, base_seed: int = 0) -> int:
    """The generator seed of task `index` of `split` (train and test ranges are disjoint)."""
    if split not in SEED_OFFSET:
        raise ValueError(f"whodunit has no split {split!r}; splits are {', '.join(SPLITS)}")
    if not 0 <= index < MAX_SPLIT_SIZE:
        raise IndexError(f"whodunit index {index} is out of range")
    return (base_seed << 32) + SEED_OFFSET[split] + index


def _true_statement_pool(
    sol: Solution, speaker: int, sizes: Sequence[int], motive: bool
) -> list[Pred]:
    pool = [Pred("not", WHO, (s,)) for s in range(sizes[WHO]) if s not in (sol[WHO], speaker)]
    cats = [WHAT, WHERE] + ([WHY] if motive else [])
    for c in cats:
        pool += [Pred("not", c, (x,)) for x in range(sizes[c]) if x != sol[c]]
        pool += [
            Pred("oneof", c, tuple(sorted((sol[c], x)))) for x in range(sizes[c]) if x != sol[c]
        ]
    return pool


def _false_statement_pool(sol: Solution, sizes: Sequence[int], motive: bool) -> list[Pred]:
    pool = []
    cats = [WHAT, WHERE] + ([WHY] if motive else [])
    for c in cats:
        pool.append(Pred("not", c, (sol[c],)))
        others = [x for x in range(sizes[c]) if x != sol[c]]
        pool += [Pred("oneof", c, pair) for pair in itertools.combinations(others, 2)]
    return pool


def _clue_pool(sol: Solution, sizes: Sequence[int], motive: bool) -> list[Pred]:
    cats = [WHO, WHAT, WHERE] + ([WHY] if motive else [])
    pool = []
    for c in cats:
        pool += [Pred("not", c, (x,)) for x in range(sizes[c]) if x != sol[c]]
        pool += [
            Pred("oneof", c, tuple(sorted((sol[c], x)))) for x in range(sizes[c]) if x != sol[c]
        ]
    pairs = [(WHO, WHAT), (WHO, WHERE), (WHAT, WHERE)] + ([(WHO, WHY)] if motive else [])
    for a, b in pairs:
        for x in range(sizes[a]):
            for y in range(sizes[b]):
                if not (x == sol[a] and y == sol[b]):
                    pool.append(Pred("notboth", a, (x,), b, y))
    return pool


def _choose_statements(
    rng: random.Random, sol: Solution, sizes: Sequence[int], d: Difficulty
) -> tuple[tuple[Pred, ...], ...]:
    out = []
    false_pool = _false_statement_pool(sol, sizes, d.motive)
    for speaker in range(sizes[WHO]):
        true_pool = _true_statement_pool(sol, speaker, sizes, d.motive)
        n_false = d.lying_statements if speaker == sol[WHO] else 0
        chosen = rng.sample(false_pool, n_false) + rng.sample(
            true_pool, d.statements_per_suspect - n_false
        )
        rng.shuffle(chosen)
        out.append(tuple(chosen))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def generate_case(seed: int, difficulty: Difficulty = DEFAULT_DIFFICULTY) -> Case:
    """Build the case of `seed`: pick names and a solution, then add clues until exactly one
    candidate fits."""
    d = difficulty
    rng = random.Random(seed)
    suspects = tuple(rng.sample(SUSPECT_POOL, d.suspects))
    weapons = tuple(rng.sample(WEAPON_POOL, d.weapons))
    locations = tuple(rng.sample(LOCATION_POOL, d.locations))
    motives = tuple(rng.sample(MOTIVE_POOL, d.motives)) if d.motive else ()
    sizes = (d.suspects, d.weapons, d.locations, d.motives if d.motive else 1)
    sol: Solution = tuple(rng.randrange(n) for n in sizes)  # type: ignore[assignment]

    space = Space(sizes)
    target = space.bit(sol)
    statements = _choose_statements(rng, sol, sizes, d)
    candidates = space.statements_mask(statements, d.lying_statements)
    assert candidates & target, "the true solution must satisfy its own statements"

    pool = _clue_pool(sol, sizes, d.motive)
    rng.shuffle(pool)
    masks = {p: space.mask(p) for p in pool}
    chosen: list[Pred] = []
    for p in pool:  # greedy: keep any clue that rules out a remaining candidate
        if candidates == target:
            break
        if candidates & ~masks[p]:
            chosen.append(p)
            candidates &= masks[p]
    # cannot happen: the pool rules out every wrong value of every category
    if candidates != target:
        raise RuntimeError(f"whodunit seed {seed}: clues do not pin down the solution")

    base = space.statements_mask(statements, d.lying_statements)
    for p in list(chosen):  # drop clues the others make redundant, so each remaining one matters
        rest = base
        for q in chosen:
            if q is not p:
                rest &= masks[q]
        if rest == target:
            chosen.remove(p)
    spare = [p for p in pool if p not in chosen]
    chosen += spare[: max(0, d.min_clues - len(chosen))]
    rng.shuffle(chosen)

    return Case(
        seed=seed,
        difficulty=d,
        victim=rng.choice(VICTIM_POOL),
        place=rng.choice(PLACE_POOL),
        weather=rng.choice(WEATHER_POOL),
        suspects=suspects,
        weapons=weapons,
        locations=locations,
        motives=motives,
        solution=sol,
        clues=tuple(chosen),
        statements=statements,
    )


def iter_cases(
    split: str, count: int, difficulty: Difficulty = DEFAULT_DIFFICULTY, base_seed: int = 0
) -> Iterator[Case]:
    """The first `count` cases of a split (for tests and inspection)."""
    for i in range(count):
        yield generate_case(case_seed(split, i, base_seed), difficulty)
