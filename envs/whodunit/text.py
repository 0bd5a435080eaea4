"""The text a case shows: its prompt, the clue and statement sentences, what each information tool
lists, and the one wording of the lie rule.

`CaseText` is a mixin of `Case` (envs/whodunit/case.py): it reads the case's fields.
"""

from __future__ import annotations

import functools

from envs.whodunit.logic import WHAT, WHERE, WHO, WHY, Pred
from envs.whodunit.options import Difficulty


def _cap(text: str) -> str:
    """First letter upper-cased, the rest untouched ('the cast-iron kettle' -> 'The cast-iron
    kettle')."""
    return text[:1].upper() + text[1:]


class CaseText:
    """The sentences of a case (mixed into `Case`)."""

    difficulty: Difficulty
    victim: tuple[str, str]
    place: str
    weather: str
    suspects: tuple[tuple[str, str], ...]
    weapons: tuple[str, ...]
    locations: tuple[str, ...]
    motives: tuple[str, ...]
    clues: tuple[Pred, ...]
    statements: tuple[tuple[Pred, ...], ...]

    def answer(self) -> dict[str, str]:
        """The solution as names (defined by `Case`)."""
        raise NotImplementedError

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
