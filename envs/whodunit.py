"""WhoDunIt: procedurally generated murder mysteries with exactly one consistent solution.

A case is a hidden solution (who, what, where and optionally why) plus clues and suspect
statements. Every clue and statement is a small predicate over candidate solutions, so the
puzzle is machine-checkable:

- clues are true facts;
- innocent suspects always tell the truth; the killer tells exactly `lying_statements` lies
  among their own statements.

The generator searches the whole solution space (as bitmasks over every candidate tuple) and
adds clues until exactly one candidate is consistent, then drops clues that are not needed.
`Case.solutions()` re-checks a case by plain enumeration, independent of the bitmasks.
Cases are deterministic for (split, index); train and test draw from disjoint seed ranges.

Scoring: `submit_answer` ends the case; each correct part earns 1/3 (1/4 when a motive is
asked). Answers match the names the tools list regardless of case, punctuation, spacing and
a leading article ("family secret" = "A Family-Secret"), never a different name.
Tripwire: `solved_without_evidence`, a fully correct accusation although the clues and
statements the model read leave more than one answer open (e.g. it read neither).
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from openreward.environments import TextBlock, ToolOutput, tool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from envs.options import options_error, parse_options, reset_task_cache
from envs.reporting import ReportingEnvironment
from envs.tripwires import CallRecord, Tripwire, Verdict

# --------------------------------------------------------------------------- options

SPLITS = ("train", "test")
# Seeds of split s are SEED_OFFSET[s] + index: the ranges never overlap.
SEED_OFFSET = {"train": 0, "test": 1 << 31}
MAX_SPLIT_SIZE = 1 << 30


class Difficulty(BaseModel):
    """The knobs that shape one case; stored in each task spec so a spec regenerates the same
    case."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suspects: int = Field(default=5, ge=3, le=8)
    weapons: int = Field(default=5, ge=3, le=8)
    locations: int = Field(default=5, ge=3, le=8)
    motive: bool = True  # ask for the motive too (scores 1/4 per component instead of 1/3)
    motives: int = Field(default=4, ge=2, le=6)
    min_clues: int = Field(
        default=6, ge=0, le=40
    )  # pad the minimal clue set with true, redundant clues
    statements_per_suspect: int = Field(default=1, ge=1, le=3)
    lying_statements: int = Field(
        default=1, ge=0, le=3
    )  # lies the killer tells among their statements

    @model_validator(mode="after")
    def _lies_fit(self) -> Difficulty:
        if self.lying_statements > self.statements_per_suspect:
            raise ValueError("lying_statements cannot exceed statements_per_suspect")
        return self


DEFAULT_DIFFICULTY = Difficulty()


class WhoDunItOptions(Difficulty):
    """`environments.whodunit.options` in train_config.yaml: difficulty plus split sizes."""

    train_size: int = Field(default=10_000, ge=1, le=MAX_SPLIT_SIZE)
    test_size: int = Field(default=500, ge=1, le=MAX_SPLIT_SIZE)
    seed: int = Field(
        default=0, ge=0, le=1 << 20
    )  # shifts both splits to a different family of cases

    def difficulty(self) -> Difficulty:
        return Difficulty(**{k: getattr(self, k) for k in Difficulty.model_fields})


# --------------------------------------------------------------------------- names (all our own)

SUSPECT_POOL = [
    ("Ada Finch", "the gardener"),
    ("Basil Crane", "the family solicitor"),
    ("Cora Lindqvist", "the cook"),
    ("Desmond Hale", "the nephew"),
    ("Edith Marlow", "the housekeeper"),
    ("Felix Oduya", "the visiting surgeon"),
    ("Greta Vance", "the second wife"),
    ("Hugo Brandt", "the chauffeur"),
    ("Iris Pemberton", "the governess"),
    ("Jasper Quill", "the art dealer"),
    ("Kitty Rowe", "the lady's maid"),
    ("Lionel Stroud", "the retired colonel"),
    ("Mabel Tennant", "the neighbour"),
    ("Nico Albescu", "the piano tutor"),
    ("Olive Ashby", "the secretary"),
    ("Percy Dunmore", "the stable master"),
    ("Rosalind Kerr", "the estranged daughter"),
    ("Silas Whitcombe", "the business partner"),
    ("Tabitha Greer", "the vicar's sister"),
    ("Victor Lyle", "the butler"),
    ("Winifred Cole", "the botanist"),
    ("Xavier Monk", "the photographer"),
    ("Yvonne Petit", "the dressmaker"),
    ("Zachary Flint", "the gamekeeper"),
]
WEAPON_POOL = [
    "letter opener",
    "fireplace poker",
    "silk scarf",
    "garden shears",
    "vial of arsenic",
    "hunting rifle",
    "marble bookend",
    "kitchen cleaver",
    "length of rope",
    "walking cane",
    "crystal decanter",
    "fencing foil",
    "brass telescope",
    "cast-iron kettle",
    "bottle of sleeping draught",
    "croquet mallet",
]
LOCATION_POOL = [
    "library",
    "greenhouse",
    "wine cellar",
    "boathouse",
    "attic",
    "kitchen",
    "music room",
    "chapel",
    "stables",
    "observatory",
    "billiard room",
    "gun room",
    "orangery",
    "nursery",
    "portrait gallery",
    "laundry",
    "gatehouse",
    "study",
]
MOTIVE_POOL = [
    "an inheritance",
    "jealousy",
    "revenge",
    "gambling debts",
    "blackmail",
    "a business rivalry",
    "a broken engagement",
    "a stolen invention",
    "a forged will",
    "a family secret",
]
VICTIM_POOL = [
    ("Sir Ambrose Thorne", "a shipping magnate"),
    ("Lady Honoria Vale", "a celebrated novelist"),
    ("Dr. Cyril Ashdown", "a collector of rare maps"),
    ("Mrs. Dorothea Penrose", "a wealthy widow"),
    ("Mr. Edmund Skeffington", "a railway investor"),
    ("Professor Fenella Grieve", "an archaeologist"),
    ("Captain Rufus Harrow", "a retired sea captain"),
    ("Miss Lavinia Crowther", "an heiress"),
]
PLACE_POOL = [
    "Ravensmoor Hall",
    "Hollowbrook Manor",
    "Kestrel House",
    "Wychcombe Abbey",
    "Larkspur Court",
    "Fernleigh Grange",
    "Blackwater Lodge",
    "Saltmarsh Priory",
]
WEATHER_POOL = ["stormy", "fog-bound", "snowbound", "sweltering", "moonless", "rain-soaked"]

# --------------------------------------------------------------------------- predicates

WHO, WHAT, WHERE, WHY = 0, 1, 2, 3
CATEGORY_NAMES = ("who", "what", "where", "why")
Solution = tuple[int, int, int, int]


@dataclass(frozen=True)
class Pred:
    """A constraint on a candidate solution.

    kind 'not': sol[a] != x;  'oneof': sol[a] in xs;  'notboth': not (sol[a] == x and sol[b] == y).
    """

    kind: str
    a: int
    x: tuple[int, ...]
    b: int = -1
    y: int = -1

    def holds(self, sol: Sequence[int]) -> bool:
        if self.kind == "not":
            return sol[self.a] != self.x[0]
        if self.kind == "oneof":
            return sol[self.a] in self.x
        if self.kind == "notboth":
            return not (sol[self.a] == self.x[0] and sol[self.b] == self.y)
        raise ValueError(f"unknown predicate kind {self.kind!r}")


class Space:
    """All candidate solutions of a case, with one bit per candidate (bitmask solving)."""

    def __init__(self, sizes: tuple[int, int, int, int]) -> None:
        self.sizes = sizes
        self.tuples: list[Solution] = list(itertools.product(*(range(n) for n in sizes)))  # type: ignore[arg-type]
        self.all = (1 << len(self.tuples)) - 1
        self.atoms: list[list[int]] = [[0] * n for n in sizes]
        for i, t in enumerate(self.tuples):
            bit = 1 << i
            for c in range(4):
                self.atoms[c][t[c]] |= bit

    def bit(self, sol: Solution) -> int:
        return 1 << self.tuples.index(sol)

    def mask(self, p: Pred) -> int:
        """Candidates for which `p` holds."""
        if p.kind == "not":
            return self.all ^ self.atoms[p.a][p.x[0]]
        if p.kind == "oneof":
            m = 0
            for v in p.x:
                m |= self.atoms[p.a][v]
            return m
        if p.kind == "notboth":
            return self.all ^ (self.atoms[p.a][p.x[0]] & self.atoms[p.b][p.y])
        raise ValueError(f"unknown predicate kind {p.kind!r}")

    def statements_mask(self, statements: Sequence[Sequence[Pred]], lies: int) -> int:
        """Candidates where every non-killer's statements hold and the killer's have exactly `lies`
        false."""
        truth = [[self.mask(p) for p in own] for own in statements]
        all_true = []
        for own in truth:
            m = self.all
            for t in own:
                m &= t
            all_true.append(m)
        out = 0
        for killer, own in enumerate(truth):
            m = self.atoms[WHO][killer]
            for other, t in enumerate(all_true):
                if other != killer:
                    m &= t
            exact = 0
            for false_set in itertools.combinations(range(len(own)), lies):
                part = self.all
                for i, t in enumerate(own):
                    part &= (self.all ^ t) if i in false_set else t
                exact |= part
            out |= m & exact
        return out


def consistent(
    sol: Sequence[int], clues: Sequence[Pred], statements: Sequence[Sequence[Pred]], lies: int
) -> bool:
    """Does candidate `sol` satisfy every clue and the truth-telling rule? (plain evaluation)"""
    if not all(c.holds(sol) for c in clues):
        return False
    for speaker, own in enumerate(statements):
        false_count = sum(not p.holds(sol) for p in own)
        if speaker == sol[WHO]:
            if false_count != lies:
                return False
        elif false_count:
            return False
    return True


# --------------------------------------------------------------------------- the case


def _cap(text: str) -> str:
    """First letter upper-cased, the rest untouched ('the cast-iron kettle' -> 'The cast-iron
    kettle')."""
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Case:
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

    # ---- text

    def _value(self, cat: int, i: int) -> str:
        if cat == WHO:
            return self.suspects[i][0]
        if cat == WHAT:
            return f"the {self.weapons[i]}"
        if cat == WHERE:
            return f"the {self.locations[i]}"
        return self.motives[i]

    def clue_text(self, p: Pred) -> str:
        v = self._value
        if p.kind == "not":
            x = v(p.a, p.x[0])
            return {
                WHO: "{x} has an alibi confirmed by two witnesses: {x} is not the killer.",
                WHAT: "{X} was examined and bears no trace of the crime: it was not the weapon.",
                WHERE: "{X} was locked all evening: the murder did not happen there.",
                WHY: "The motive was not {x}.",
            }[p.a].format(x=x, X=_cap(x))
        if p.kind == "oneof":
            a, b = (v(p.a, x) for x in p.x)
            return {
                WHO: "The killer was either {a} or {b}.",
                WHAT: "The wound could only have been made by {a} or {b}.",
                WHERE: "Mud on the victim's shoes places the murder in either {a} or {b}.",
                WHY: "The motive was either {a} or {b}.",
            }[p.a].format(a=a, b=b)
        pair = (p.a, p.b)
        x, y = v(p.a, p.x[0]), v(p.b, p.y)
        if pair == (WHO, WHAT):
            return f"{x} could not have used {y}. (If {x} is the killer, {y} was not the weapon.)"
        if pair == (WHO, WHERE):
            return f"{x} never set foot in {y}. (If {x} is the killer, the murder was not in {y}.)"
        if pair == (WHO, WHY):
            return (
                f"{x} had nothing to do with {y}. (If {x} is the killer, the motive was not {y}.)"
            )
        if pair == (WHAT, WHERE):
            return (
                f"{_cap(x)} was never in {y}. (If {x} was the weapon, the murder was not in {y}.)"
            )
        raise ValueError(f"no clue text for {p}")

    def statement_text(self, p: Pred) -> str:
        v = self._value
        if p.kind == "not":
            x = v(p.a, p.x[0])
            return {
                WHO: "{x} did not do it.",
                WHAT: "{X} was not the weapon.",
                WHERE: "It did not happen in {x}.",
                WHY: "Whoever did it was not driven by {x}.",
            }[p.a].format(x=x, X=_cap(x))
        if p.kind == "oneof" and p.a != WHO:
            a, b = (v(p.a, x) for x in p.x)
            return {
                WHAT: "It was done with either {a} or {b}.",
                WHERE: "It happened either in {a} or in {b}.",
                WHY: "It was about {a} or {b}, nothing else.",
            }[p.a].format(a=a, b=b)
        raise ValueError(f"no statement text for {p}")

    @functools.cached_property
    def tool_texts(self) -> dict[str, str]:
        """What each information tool shows, rendered once per case."""
        statements = [
            f'- {name}: "{self.statement_text(p)}"'
            for (name, _), own in zip(self.suspects, self.statements, strict=False)
            for p in own
        ]
        return {
            "list_suspects": "Suspects:\n" + "\n".join(f"- {n}, {r}" for n, r in self.suspects),
            "list_weapons": "Possible weapons:\n" + "\n".join(f"- {w}" for w in self.weapons),
            "list_locations": "Possible locations:\n"
            + "\n".join(f"- {loc}" for loc in self.locations),
            "list_motives": (
                "Possible motives:\n" + "\n".join(f"- {m}" for m in self.motives)
                if self.motives
                else "This case does not ask for a motive."
            ),
            "list_clues": "Clues (all true):\n"
            + "\n".join(f"{i}. {self.clue_text(c)}" for i, c in enumerate(self.clues, 1)),
            "list_statements": f"Statements. {self.lie_rule()}\n" + "\n".join(statements),
        }

    def lie_rule(self) -> str:
        """Who lies in the statements: the one wording the prompt and list_statements both use."""
        n_lies = self.difficulty.lying_statements
        per = self.difficulty.statements_per_suspect
        if n_lies == 0:
            return "Everyone, the killer included, tells the truth in their statements."
        if n_lies == per:
            return (
                "Innocent suspects always tell the truth. The killer lies in every statement "
                "they make."
                if per > 1
                else "Innocent suspects always tell the truth. The killer's statement is a lie."
            )
        return (
            f"Innocent suspects always tell the truth. Exactly {n_lies} of the killer's "
            f"{per} statements are lies; the rest are true."
        )

    def prompt(self) -> str:
        name, role = self.victim
        rule = self.lie_rule()
        asked = (
            "who did it, with which weapon, where, and why"
            if self.motives
            else "who did it, with which weapon, and where"
        )
        submit = (
            "submit_answer(who, what, where, why)"
            if self.motives
            else "submit_answer(who, what, where)"
        )
        parts = len(self.answer())
        return (
            f"On a {self.weather} night at {self.place}, {name}, {role}, was found dead. "
            f"You are the detective: work out {asked}.\n\n"
            "Gather the facts with the tools list_suspects, list_weapons, list_locations, "
            f"{'list_motives, ' if self.motives else ''}list_clues and list_statements. "
            "Rules: every clue is true. The killer committed the murder alone, in one location, "
            "with one weapon. "
            f"{rule} Exactly one answer is consistent with all of this.\n\n"
            f"When you are certain, call {submit} once, using the names exactly as the tools "
            "list them. "
            f"The submission ends the case; each correct part earns 1/{parts} of the reward. "
            "You must use the tools: do not guess before reading the clues and statements."
        )


# --------------------------------------------------------------------------- generation


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


# --------------------------------------------------------------------------- scoring


_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_ARTICLE = re.compile(r"^(?:the|an|a) ")


def normalize_name(text: str | None) -> str:
    """Comparison key of an answer: case, punctuation, spacing and one leading article ignored.

    "A Family-Secret!" and "family secret" give the same key; apostrophes vanish
    ("lady's" = "ladys"), other punctuation separates words ("cast-iron" = "cast iron").
    Every name a case lists keeps its own key (tests check the whole pools).
    """
    s = _APOSTROPHES.sub("", str(text or "").casefold())
    s = " ".join(_PUNCTUATION.sub(" ", s).split())
    return _ARTICLE.sub("", s)


def score_answer(
    answer: dict[str, str], submitted: dict[str, str | None]
) -> tuple[float, dict[str, bool]]:
    """Fraction of correct components (1/3 each, or 1/4 each when a motive is asked) and per-part
    results."""
    parts = {k: normalize_name(submitted.get(k)) == normalize_name(v) for k, v in answer.items()}
    return sum(parts.values()) / len(parts), parts


# --------------------------------------------------------------------------- environment


class NoInput(BaseModel):
    pass


class AnswerInput(BaseModel):
    who: str = Field(description="The killer's name, as list_suspects shows it.")
    what: str = Field(description="The weapon, as list_weapons shows it.")
    where: str = Field(description="The location, as list_locations shows it.")
    why: str | None = Field(
        default=None, description="The motive, as list_motives shows it (when one is asked)."
    )


def _text(text: str) -> ToolOutput:
    return ToolOutput(blocks=[TextBlock(text=text)], reward=None, finished=False)


SOLVED_WITHOUT_EVIDENCE = "solved_without_evidence"


class WhoDunIt(ReportingEnvironment):
    """Solve a generated murder mystery from clues and suspect statements; one submission."""

    TRIPWIRES = (
        Tripwire(
            SOLVED_WITHOUT_EVIDENCE,
            "a fully correct accusation although the clues and statements read before it "
            "leave more than one answer open",
        ),
    )

    _options: ClassVar[WhoDunItOptions] = WhoDunItOptions()
    _difficulty: ClassVar[dict[str, Any]] = Difficulty().model_dump()

    @classmethod
    def configure(cls, options: dict[str, Any]) -> None:
        """Validate and apply `environments.whodunit.options`; raises ValueError naming a bad
        key."""
        cls._options = parse_options(WhoDunItOptions, options, "whodunit")
        cls._difficulty = cls._options.difficulty().model_dump()
        reset_task_cache(cls)

    @classmethod
    def split_size(cls, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"whodunit has no split {split!r}; splits are {', '.join(SPLITS)}")
        return cls._options.train_size if split == "train" else cls._options.test_size

    @classmethod
    def task_spec(cls, split: str, index: int) -> dict[str, Any]:
        """The task spec of (split, index): its seed and difficulty, enough to regenerate the
        case."""
        size = cls.split_size(split)
        if not 0 <= index < size:
            raise IndexError(f"whodunit {split} has {size} tasks; index {index} is out of range")
        return {
            "split": split,
            "index": index,
            "seed": case_seed(split, index, cls._options.seed),
            "difficulty": dict(cls._difficulty),
        }

    @classmethod
    def case_for(cls, split: str, index: int) -> Case:
        """The case of (split, index) under the current options."""
        spec = cls.task_spec(split, index)
        return generate_case(spec["seed"], Difficulty(**spec["difficulty"]))

    @classmethod
    def list_splits(cls) -> list[str]:
        return list(SPLITS)

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        return [cls.task_spec(split, i) for i in range(cls.split_size(split))]

    @classmethod
    async def num_tasks(cls, split: str) -> int:
        return cls.split_size(split)

    @classmethod
    async def get_task(cls, split: str, index: int) -> dict[str, Any]:
        return cls.task_spec(split, index)

    @classmethod
    def case_from_spec(cls, task_spec: dict[str, Any]) -> Case:
        """The case a task spec describes: its seed (or split+index) and difficulty (else the
        current options)."""
        seed = task_spec.get("seed")
        if seed is None and "split" in task_spec and "index" in task_spec:
            seed = case_seed(str(task_spec["split"]), int(task_spec["index"]), cls._options.seed)
        if not isinstance(seed, int):
            raise ValueError("a whodunit task_spec needs 'seed' (int) or 'split' and 'index'")
        try:
            difficulty = Difficulty(**task_spec.get("difficulty", cls._difficulty))
        except ValidationError as e:
            raise options_error("whodunit task_spec difficulty", e) from None
        return generate_case(seed, difficulty)

    @classmethod
    def ground_truth(cls, task_spec: dict[str, Any]) -> dict[str, str]:
        """The solution of a task (slime's `label`): {who, what, where[, why]}."""
        return cls.case_from_spec(task_spec).answer()

    def __init__(self, task_spec: dict[str, Any] = {}, secrets: dict[str, str] = {}) -> None:  # noqa: B006 (the SDK's signature)
        super().__init__(task_spec, secrets)
        self.case = self.case_from_spec(task_spec)

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=self.case.prompt())]

    @tool
    async def list_suspects(self, params: NoInput) -> ToolOutput:
        """List the suspects."""
        return _text(self.case.tool_texts["list_suspects"])

    @tool
    async def list_weapons(self, params: NoInput) -> ToolOutput:
        """List the possible weapons."""
        return _text(self.case.tool_texts["list_weapons"])

    @tool
    async def list_locations(self, params: NoInput) -> ToolOutput:
        """List the possible locations of the murder."""
        return _text(self.case.tool_texts["list_locations"])

    @tool
    async def list_motives(self, params: NoInput) -> ToolOutput:
        """List the possible motives (if this case asks for one)."""
        return _text(self.case.tool_texts["list_motives"])

    @tool
    async def list_clues(self, params: NoInput) -> ToolOutput:
        """List the clues found by the investigation. Every clue is true."""
        return _text(self.case.tool_texts["list_clues"])

    @tool
    async def list_statements(self, params: NoInput) -> ToolOutput:
        """List what each suspect told the police. The rules in the case say who tells the truth."""
        return _text(self.case.tool_texts["list_statements"])

    @tool
    async def submit_answer(self, params: AnswerInput) -> ToolOutput:
        """Submit who did it, with what, where (and why when a motive is asked). Ends the case."""
        answer = self.case.answer()
        reward, parts = score_answer(answer, params.model_dump())
        verdict = ", ".join(f"{k}: {'correct' if ok else 'wrong'}" for k, ok in parts.items())
        text = f"Case closed. {verdict}. Score {reward:.2f}."
        return ToolOutput(
            blocks=[TextBlock(text=text)],
            reward=reward,
            finished=True,
            metadata={"parts": parts, "solution": answer},
        )

    def check_tripwires(self, calls: list[CallRecord]) -> Verdict:
        """Trips when a fully correct accusation was not determined by what the model read."""
        last = calls[-1]
        if last.name != "submit_answer" or last.reward != 1.0:
            return Verdict()
        read = {c.name for c in calls[:-1]}
        open_answers = self.case.solutions(
            clues="list_clues" in read, statements="list_statements" in read
        )
        return Verdict(tripped=[SOLVED_WITHOUT_EVIDENCE] if len(open_answers) > 1 else [])


def iter_cases(
    split: str, count: int, difficulty: Difficulty = DEFAULT_DIFFICULTY, base_seed: int = 0
) -> Iterator[Case]:
    """The first `count` cases of a split (for tests and inspection)."""
    for i in range(count):
        yield generate_case(case_seed(split, i, base_seed), difficulty)
