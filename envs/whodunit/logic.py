"""The logic of a case: candidate solutions, the predicates clues and statements state about them,
and checking a candidate against them (by plain evaluation, and as bitmasks over every candidate).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

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
