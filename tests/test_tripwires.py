"""Tripwires: each env's invariants of an honest success fire on a scripted cheat, never on an
honest episode, never change the reward, and travel in the tool output over the real servers."""

from __future__ import annotations

from typing import Any

import pytest
from ors_episodes import PERFECT_HAIKU, ors_session, sdk_server

from contract.env_report import EnvReport, group_tripwires
from envs.gsm8k import GSM8K
from envs.haiku import Haiku
from envs.reporting import CHECK_FAILED
from envs.tripwires import Scope, Verdict
from envs.whodunit import WhoDunIt


async def _episode(env: Any, calls: list[tuple[str, dict[str, Any]]]) -> Any:
    """Run calls in-process through the SDK's dispatch; the last output."""
    out = None
    for name, args in calls:
        res = (await env._call_tool(name, args)).root
        assert res.ok, res
        out = res.output
    return out


# ---------------------------------------------------------------- whodunit


async def test_whodunit_accusation_without_evidence_trips_but_keeps_its_reward() -> None:
    spec = WhoDunIt.task_spec("test", 3)
    answer = WhoDunIt(task_spec=spec).case.answer()
    cheat = await _episode(WhoDunIt(task_spec=spec), [("submit_answer", answer)])
    assert cheat.reward == 1.0 and cheat.finished
    assert cheat.metadata["tripwires"] == ["solved_without_evidence"]
    # read the clues only: the statements are still needed, so a right answer is a guess
    lucky = await _episode(
        WhoDunIt(task_spec=spec), [("list_clues", {}), ("submit_answer", answer)]
    )
    assert lucky.metadata["tripwires"] == ["solved_without_evidence"]


async def test_whodunit_honest_and_wrong_episodes_do_not_trip() -> None:
    spec = WhoDunIt.task_spec("test", 3)
    answer = WhoDunIt(task_spec=spec).case.answer()
    honest = await _episode(
        WhoDunIt(task_spec=spec),
        [
            ("list_suspects", {}),
            ("list_clues", {}),
            ("list_statements", {}),
            ("submit_answer", answer),
        ],
    )
    assert honest.reward == 1.0 and honest.metadata["tripwires"] == []
    wrong = await _episode(WhoDunIt(task_spec=spec), [("submit_answer", {**answer, "who": "x"})])
    assert wrong.reward < 1.0 and wrong.metadata["tripwires"] == []


# ---------------------------------------------------------------- gsm8k


async def test_gsm8k_unworked_correct_answer_trips() -> None:
    task = await GSM8K.get_task("test", 0)
    assert task["steps"] >= 2
    cheat = await _episode(GSM8K(task_spec=task), [("submit_answer", {"answer": task["label"]})])
    assert cheat.reward == 1.0 and cheat.metadata["tripwires"] == ["answer_without_calculation"]
    honest = await _episode(
        GSM8K(task_spec=task),
        [
            ("calculator", {"expression": "16 - 3 - 4"}),
            ("calculator", {"expression": "9 * 2"}),
            ("submit_answer", {"answer": task["label"]}),
        ],
    )
    assert honest.reward == 1.0 and honest.metadata["tripwires"] == []
    wrong = await _episode(GSM8K(task_spec=task), [("submit_answer", {"answer": "-1"})])
    assert wrong.reward == 0.0 and wrong.metadata["tripwires"] == []


async def test_gsm8k_one_step_problem_may_be_answered_directly() -> None:
    task = {"question": "What is 2 + 3?", "label": "5", "steps": 1}
    out = await _episode(GSM8K(task_spec=task), [("submit_answer", {"answer": "5"})])
    assert out.metadata["tripwires"] == []
    unknown = {"question": "What is 2 + 3?", "label": "5"}  # a spec without steps: not judged
    out = await _episode(GSM8K(task_spec=unknown), [("submit_answer", {"answer": "5"})])
    assert out.metadata["tripwires"] == []


# ---------------------------------------------------------------- haiku (group scope)


async def test_haiku_same_poem_in_a_group_trips_both_samples() -> None:
    task = await Haiku.get_task("test", 0)
    outs = [
        await _episode(Haiku(task_spec=task), [("submit_haiku", {"poem": p})])
        for p in (PERFECT_HAIKU, PERFECT_HAIKU.upper().replace("\n", " / "), ON_TOPIC_HAIKU_2)
    ]
    keys = [o.metadata["tripwire_keys"] for o in outs]
    assert all(o.reward == 1.0 and o.metadata["tripwires"] == [] for o in outs)
    assert keys[0] == keys[1] != keys[2]  # case, punctuation and line breaks do not hide a copy
    assert group_tripwires([(7, keys[0]), (7, keys[1]), (7, keys[2])]) == [
        {"duplicate_in_group"},
        {"duplicate_in_group"},
        set(),
    ]
    # other groups, or no group, never match
    assert group_tripwires([(7, keys[0]), (8, keys[1]), (None, keys[0])]) == [set(), set(), set()]


async def test_haiku_failed_poems_report_no_key() -> None:
    out = await _episode(
        Haiku(task_spec={"topic": "a kettle whistling"}),
        [("submit_haiku", {"poem": "bad"})] * 3,
    )
    assert out.finished and out.metadata["tripwire_keys"] == {}


ON_TOPIC_HAIKU_2 = "Moonlight on the pond\nripples carry silver light\nthe reeds bow and sleep"


# ---------------------------------------------------------------- the reporting machinery


def test_every_env_declares_its_wires() -> None:
    declared = {
        cls.__name__: [(w.name, w.scope) for w in cls.TRIPWIRES] for cls in (GSM8K, WhoDunIt, Haiku)
    }
    assert declared == {
        "GSM8K": [("answer_without_calculation", Scope.EPISODE)],
        "WhoDunIt": [("solved_without_evidence", Scope.EPISODE)],
        "Haiku": [("duplicate_in_group", Scope.GROUP)],
    }


async def test_a_broken_check_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Any, calls: Any) -> Verdict:
        raise RuntimeError("bug in a check")

    monkeypatch.setattr(GSM8K, "check_tripwires", boom)
    task = await GSM8K.get_task("test", 0)
    out = await _episode(GSM8K(task_spec=task), [("submit_answer", {"answer": task["label"]})])
    assert out.reward == 1.0 and out.metadata["tripwires"] == [CHECK_FAILED]


async def test_an_undeclared_wire_is_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GSM8K, "check_tripwires", lambda self, calls: Verdict(tripped=["typo"]))
    task = await GSM8K.get_task("test", 0)
    out = await _episode(GSM8K(task_spec=task), [("submit_answer", {"answer": task["label"]})])
    assert out.metadata["tripwires"] == [CHECK_FAILED]


def test_the_bridge_reads_reports_defensively() -> None:
    report = EnvReport()
    report.read(None)
    report.read({"tripwires": "not a list", "env_provenance": ["x"]})
    assert report == EnvReport()
    report.read(
        {
            "env_provenance": {"env": "gsm8k", "env_version": "1+ab", "task_spec_hash": 5},
            "tripwires": ["b", "a", 3, "x" * 1000, "a"],
            "tripwire_keys": {"dup": "k1", "bad": {"nested": 1}},
        }
    )
    assert report.provenance == {"env": "gsm8k", "env_version": "1+ab"}
    assert report.tripwires == ["a", "b"] and report.tripwire_keys == {"dup": "k1"}
    report.read({"env_provenance": {"env": "other"}})  # the first provenance stays
    assert report.provenance["env"] == "gsm8k" and report.checked


# ---------------------------------------------------------------- over the wire


@pytest.mark.parametrize("server", ["ours", "sdk"])
async def test_reports_travel_through_both_servers(server: str, server_url: str) -> None:
    """Provenance on every output, the verdict on the last, through the stock client."""
    if server == "sdk":
        with sdk_server("whodunit") as url:
            outs = await _remote_cheat(url)
    else:
        outs = await _remote_cheat(server_url)
    assert all(o.metadata["env_provenance"]["env"] == "whodunit" for o in outs)
    assert outs[0].metadata["env_provenance"]["env_version"].startswith("0.")
    assert "tripwires" not in outs[0].metadata
    assert outs[-1].reward == 1.0 and outs[-1].metadata["tripwires"] == ["solved_without_evidence"]


async def _remote_cheat(url: str) -> list[Any]:
    answer = WhoDunIt.case_for("test", 5).answer()
    async with ors_session(url, "whodunit", "test", 5) as s:
        return [await s.call_tool("list_suspects", {}), await s.call_tool("submit_answer", answer)]
