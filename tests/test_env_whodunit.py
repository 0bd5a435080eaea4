"""WhoDunIt env: determinism, proven-unique solutions, split disjointness, scoring, and full
episodes."""

from __future__ import annotations

import itertools

import pytest
from openreward.api.errors import ToolCallError
from ors_episodes import ors_session, play_whodunit, sdk_server

import envs.whodunit.scoring as scoring
from envs.whodunit import (
    LOCATION_POOL,
    MOTIVE_POOL,
    SEED_OFFSET,
    SUSPECT_POOL,
    WEAPON_POOL,
    WHAT,
    WHERE,
    WHO,
    WHY,
    Case,
    Difficulty,
    Pred,
    WhoDunIt,
    case_seed,
    consistent,
    generate_case,
    iter_cases,
    normalize_name,
    score_answer,
)

INFO_TOOLS = [
    "list_clues",
    "list_locations",
    "list_motives",
    "list_statements",
    "list_suspects",
    "list_weapons",
]

VARIANTS = [
    Difficulty(),
    Difficulty(motive=False),
    Difficulty(suspects=3, weapons=3, locations=3, motives=2, min_clues=0),
    Difficulty(suspects=8, weapons=8, locations=8, motives=6),
    Difficulty(statements_per_suspect=2, lying_statements=1),
    Difficulty(statements_per_suspect=3, lying_statements=3, motive=False),
    Difficulty(lying_statements=0, min_clues=12),
]


@pytest.fixture(autouse=True)
def default_options():
    WhoDunIt.configure({})
    yield
    WhoDunIt.configure({})


def _signature(case: Case) -> tuple:
    return (
        case.suspects,
        case.weapons,
        case.locations,
        case.motives,
        case.solution,
        case.clues,
        case.statements,
    )


# ---------------------------------------------------------------- generation


def test_cases_are_deterministic() -> None:
    first = [_signature(c) for c in iter_cases("train", 30)]
    generate_case.cache_clear()
    again = [_signature(c) for c in iter_cases("train", 30)]
    assert first == again
    assert WhoDunIt.case_for("test", 7).prompt() == WhoDunIt.case_for("test", 7).prompt()
    assert len({c[4] for c in first}) > 5  # solutions vary across indices


def test_default_cases_have_exactly_one_solution_by_enumeration() -> None:
    for split, count in (("train", 400), ("test", 200)):
        for case in iter_cases(split, count):
            assert case.solutions() == [case.solution], f"{split} seed {case.seed}"


@pytest.mark.parametrize(
    "difficulty", VARIANTS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.model_dump().items())
)
def test_difficulty_variants_have_exactly_one_solution(difficulty: Difficulty) -> None:
    for case in iter_cases("train", 60, difficulty):
        assert case.sizes[:3] == (difficulty.suspects, difficulty.weapons, difficulty.locations)
        assert bool(case.motives) is difficulty.motive
        assert len(case.clues) >= difficulty.min_clues
        assert all(len(own) == difficulty.statements_per_suspect for own in case.statements)
        assert case.solutions() == [case.solution], f"seed {case.seed}"


def test_clues_are_needed_beyond_padding() -> None:
    """The minimal clue set matters: without clues, several candidates remain."""
    for case in iter_cases("train", 50, Difficulty(min_clues=0)):
        lies = case.difficulty.lying_statements
        without = [
            s
            for s in itertools.product(*(range(n) for n in case.sizes))
            if consistent(s, (), case.statements, lies)
        ]
        assert len(without) > 1
        for i in range(len(case.clues)):  # and every clue of the minimal set is needed
            rest = case.clues[:i] + case.clues[i + 1 :]
            assert (
                len(
                    [
                        s
                        for s in itertools.product(*(range(n) for n in case.sizes))
                        if consistent(s, rest, case.statements, lies)
                    ]
                )
                > 1
            )


def test_statements_follow_the_truth_rule() -> None:
    for d in (Difficulty(), Difficulty(statements_per_suspect=3, lying_statements=2)):
        for case in iter_cases("test", 40, d):
            for speaker, own in enumerate(case.statements):
                false = sum(not p.holds(case.solution) for p in own)
                assert false == (d.lying_statements if speaker == case.solution[WHO] else 0)
            assert all(c.holds(case.solution) for c in case.clues)


def test_train_and_test_use_disjoint_seeds_and_cases() -> None:
    train = {case_seed("train", i) for i in range(10_000)}
    test = {case_seed("test", i) for i in range(500)}
    assert not train & test
    assert case_seed("test", 0) == SEED_OFFSET["test"]
    train_cases = {_signature(c) for c in iter_cases("train", 500)}
    test_cases = {_signature(c) for c in iter_cases("test", 500)}
    assert not train_cases & test_cases
    with pytest.raises(ValueError, match="no split"):
        case_seed("dev", 0)


def test_texts_are_complete() -> None:
    for case in iter_cases("train", 40):
        for p in case.clues:
            text = case.clue_text(p)
            assert text and "None" not in text
        for own in case.statements:
            for p in own:
                assert case.statement_text(p)
        prompt = case.prompt()
        for tool_name in ("list_suspects", "list_clues", "list_statements", "submit_answer"):
            assert tool_name in prompt


def test_predicate_semantics() -> None:
    sol = (1, 2, 0, 3)
    assert Pred("not", WHO, (0,)).holds(sol) and not Pred("not", WHO, (1,)).holds(sol)
    assert Pred("oneof", WHERE, (0, 4)).holds(sol) and not Pred("oneof", WHERE, (1, 4)).holds(sol)
    assert not Pred("notboth", WHO, (1,), WHAT, 2).holds(sol)
    assert Pred("notboth", WHO, (1,), WHY, 0).holds(sol)


# ---------------------------------------------------------------- scoring


def test_scoring_partial_credit_quarters_and_thirds() -> None:
    four = {"who": "Ada Finch", "what": "letter opener", "where": "library", "why": "revenge"}
    assert score_answer(four, dict(four))[0] == 1.0
    assert score_answer(four, {**four, "why": None})[0] == 0.75
    assert (
        score_answer(four, {"who": "ada finch", "what": "x", "where": "y", "why": "z"})[0] == 0.25
    )
    assert score_answer(four, {"who": "x", "what": "x", "where": "x"})[0] == 0.0
    three = {"who": "Ada Finch", "what": "letter opener", "where": "library"}
    assert score_answer(three, {**three, "why": "anything"})[0] == 1.0
    assert score_answer(
        three, {"who": "ADA FINCH", "what": "The Letter Opener", "where": "nowhere"}
    )[0] == pytest.approx(2 / 3)
    assert score_answer(three, {"who": "Ada", "what": "letter", "where": "libraries"})[0] == 0.0


def test_an_answer_longer_than_any_name_is_wrong_unnormalized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worst-inputs attack sent 300 KB names: normalizing each held the server's loop 13 ms.
    A part over MAX_ANSWER_CHARS is wrong without being normalized, even one that would normalize to
    the listed name; one within the bound still matches."""
    three = {"who": "Ada Finch", "what": "letter opener", "where": "library"}
    normalized: list[str | None] = []
    real = scoring.normalize_name
    monkeypatch.setattr(scoring, "normalize_name", lambda t: normalized.append(t) or real(t))
    padded = "Ada Finch" + " " * scoring.MAX_ANSWER_CHARS
    parts = score_answer(three, {**three, "who": padded})[1]
    assert parts == {"who": False, "what": True, "where": True} and padded not in normalized
    fits = "Ada Finch" + " " * (scoring.MAX_ANSWER_CHARS - len("Ada Finch"))
    assert score_answer(three, {**three, "who": fits})[1]["who"]


def test_normalize_name() -> None:
    assert normalize_name("  The   Wine Cellar ") == "wine cellar"
    assert normalize_name(None) == ""
    assert normalize_name("Theodore") == "theodore"
    assert normalize_name("Anne") == "anne" and normalize_name("Aaron") == "aaron"


@pytest.mark.parametrize(
    "listed, submitted",
    [
        ("a family secret", "family secret"),  # the tools list it with "a": it was wrong before
        ("an inheritance", "Inheritance"),
        ("a family secret", "A  FAMILY-SECRET!"),
        ("cast-iron kettle", "the cast iron kettle"),
        ("Kitty Rowe", "kitty rowe."),
        ("wine cellar", "The wine\tcellar"),
        ("gambling debts", "“gambling debts”"),
    ],
)
def test_answers_match_despite_articles_case_punctuation_and_spacing(
    listed: str, submitted: str
) -> None:
    answer = {"who": "Kitty Rowe", "what": "letter opener", "where": "attic", "why": listed}
    assert score_answer(answer, {**answer, "why": submitted}) == (
        1.0,
        {"who": True, "what": True, "where": True, "why": True},
    )


@pytest.mark.parametrize(
    "listed, submitted",
    [
        ("a family secret", "family secrets"),
        ("an inheritance", "a forged will"),
        ("wine cellar", "cellar"),
        ("Ada Finch", "Ada"),
        ("Ada Finch", "Ada Finch, the gardener"),
        ("letter opener", "opener letter"),
    ],
)
def test_a_different_answer_never_matches(listed: str, submitted: str) -> None:
    assert normalize_name(listed) != normalize_name(submitted)


def test_every_listed_name_keeps_its_own_key() -> None:
    pools = [[n for n, _ in SUSPECT_POOL], WEAPON_POOL, LOCATION_POOL, MOTIVE_POOL]
    for pool in pools:
        keys = [normalize_name(n) for n in pool]
        assert len(set(keys)) == len(pool) and all(keys)


def test_prompt_and_tools_state_the_same_lie_rule() -> None:
    lies_doc = (WhoDunIt.list_statements.__doc__ or "").lower()
    assert "may lie" not in lies_doc
    for difficulty in VARIANTS:
        case = generate_case(case_seed("test", 1), difficulty)
        rule = case.lie_rule()
        assert rule in case.prompt() and rule in case.tool_texts["list_statements"]
    single = generate_case(case_seed("test", 1), Difficulty())
    assert "The killer's statement is a lie." in single.prompt()


# ---------------------------------------------------------------- options


def test_configure_validates_and_applies() -> None:
    with pytest.raises(ValueError, match="unknown option 'suspect'"):
        WhoDunIt.configure({"suspect": 4})
    with pytest.raises(ValueError, match="lying_statements cannot exceed"):
        WhoDunIt.configure({"lying_statements": 2})
    with pytest.raises(ValueError, match="option 'suspects'"):
        WhoDunIt.configure({"suspects": 2})
    WhoDunIt.configure(
        {"suspects": 4, "motive": False, "train_size": 20, "test_size": 5, "seed": 3}
    )
    assert len(WhoDunIt.list_tasks("train")) == 20 and len(WhoDunIt.list_tasks("test")) == 5
    case = WhoDunIt.case_for("train", 0)
    assert len(case.suspects) == 4 and case.motives == ()
    with pytest.raises(IndexError):
        WhoDunIt.task_spec("test", 5)


async def test_task_spec_carries_difficulty() -> None:
    WhoDunIt.configure({"weapons": 7})
    spec = await WhoDunIt.get_task("train", 9)
    WhoDunIt.configure({})  # a spec made under other options still regenerates its own case
    env = WhoDunIt(task_spec=spec)
    assert len(env.case.weapons) == 7
    assert WhoDunIt(task_spec={"split": "train", "index": 9}).case.weapons != env.case.weapons
    with pytest.raises(ValueError, match="seed"):
        WhoDunIt(task_spec={"foo": 1})
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        WhoDunIt(task_spec={"seed": 1, "difficulty": {"bogus": 1}})
    assert await WhoDunIt.num_tasks("train") == 10_000
    assert WhoDunIt.ground_truth(spec) == env.case.answer()


def test_ground_truth_is_the_bridge_label() -> None:
    import json

    from contract.task import task_label

    spec = WhoDunIt.task_spec("test", 1)
    assert json.loads(task_label(spec, WhoDunIt)) == WhoDunIt.case_for("test", 1).answer()


# ---------------------------------------------------------------- in-process episode


async def test_in_process_episode() -> None:
    spec = await WhoDunIt.get_task("train", 11)
    env = WhoDunIt(task_spec=spec)
    assert sorted(t.name for t in WhoDunIt.list_tools().tools) == [*INFO_TOOLS, "submit_answer"]
    case = env.case
    for name in INFO_TOOLS:
        out = (await env._call_tool(name, {})).root
        assert out.ok and out.output.reward is None and out.output.finished is False
    suspects = (await env._call_tool("list_suspects", {})).root.output.blocks[0].text
    assert all(n in suspects for n, _ in case.suspects)
    statements = (await env._call_tool("list_statements", {})).root.output.blocks[0].text
    assert statements.count("\n") == len(case.suspects)
    clues = (await env._call_tool("list_clues", {})).root.output.blocks[0].text
    assert all(case.clue_text(c) in clues for c in case.clues)

    answer = case.answer()
    out = (await env._call_tool("submit_answer", {**answer, "who": answer["who"].lower()})).root
    assert out.output.reward == 1.0 and out.output.finished
    assert out.output.metadata["solution"] == answer
    late = (await env._call_tool("list_clues", {})).root
    assert not late.ok and late.reason == "episode_finished"


async def test_in_process_no_motive_case_and_bad_submission() -> None:
    WhoDunIt.configure({"motive": False})
    env = WhoDunIt(task_spec=await WhoDunIt.get_task("test", 2))
    motives = (await env._call_tool("list_motives", {})).root.output
    assert "does not ask for a motive" in motives.blocks[0].text and motives.reward is None
    bad = (await env._call_tool("submit_answer", {"who": "x"})).root
    assert not bad.ok and bad.reason == "input_validation"  # the episode goes on
    answer = env.case.answer()
    out = (await env._call_tool("submit_answer", {**answer, "where": "nowhere"})).root
    assert out.output.reward == pytest.approx(2 / 3) and out.output.finished


# ------------------------------------------------------------ through the stock client + SDK server


@pytest.fixture(scope="module")
def sdk_url() -> str:
    with sdk_server("whodunit") as url:
        yield url


async def test_sdk_server_full_episode(sdk_url: str) -> None:
    ep = await play_whodunit(sdk_url, "test", 4, correct_parts=4)
    assert ep.tools == [*INFO_TOOLS, "submit_answer"]
    assert "list_clues" in ep.prompt and "submit_answer" in ep.prompt
    assert all(reward is None and not finished for _, _, reward, finished in ep.calls[:-1])
    assert ep.final_reward == 1.0 and ep.finished


async def test_sdk_server_partial_credit(sdk_url: str) -> None:
    ep = await play_whodunit(sdk_url, "train", 123, correct_parts=2)
    assert ep.final_reward == 0.5 and ep.finished


async def test_sdk_server_task_listing_and_finished_episode(sdk_url: str) -> None:
    from openreward import AsyncOpenReward

    client = AsyncOpenReward(api_key="test", base_url=sdk_url)
    try:
        env = client.environments.get("whodunit", base_url=sdk_url)
        assert sorted(await env.list_splits()) == ["test", "train"]
        assert await env.num_tasks("test") == 500
        task = await env.get_task("test", 4)
        assert task.task_spec["seed"] == case_seed("test", 4)
    finally:
        await client.environments.aclose()
    async with ors_session(sdk_url, "whodunit", "test", 0) as s:
        await s.call_tool("submit_answer", {"who": "a", "what": "b", "where": "c"})
        with pytest.raises(ToolCallError) as e:
            await s.call_tool("list_clues", {})
        assert e.value.reason == "episode_finished"


async def test_our_server_episodes(server_url: str) -> None:
    """The same episodes against this project's server (`python -m envs.server`)."""
    full = await play_whodunit(server_url, "test", 4, correct_parts=4)
    part = await play_whodunit(server_url, "train", 123, correct_parts=1)
    assert full.tools == [*INFO_TOOLS, "submit_answer"]
    assert all(reward is None and not finished for _, _, reward, finished in full.calls[:-1])
    assert (full.final_reward, full.finished, part.final_reward, part.finished) == (
        1.0,
        True,
        0.25,
        True,
    )
