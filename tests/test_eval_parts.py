"""The eval's parts on their own: `--model` parsing, OpenAI chat answers (hostile ones included) and
the chat client against the scripted OpenAI stub, task files, and the eval tables of the store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from openai_stub import OpenAIStub, Reply

from bridge.errors import EngineError
from bridge.trajectory import Trajectory
from bridge.trajectory_codec import trajectory_events
from envs.trajectories.errors import SpecMismatch
from envs.trajectories.evals import EpisodeRow, EvalModel, EvalRecords
from envs.trajectories.schema import SCHEMA_VERSION
from envs.trajectories.store import TrajectoryStore
from tools.errors import EvalError
from tools.eval.chat_model import MAX_CALLS_PER_TURN, ChatClient, ChatModel, parse_choice
from tools.eval.spec import EvalSpec, ModelKind, Sampling, parse_model
from tools.eval.tasks import interleave, tasks_from_file

# ---------------------------------------------------------------- --model


def test_model_kinds_and_settings() -> None:
    m = parse_model("base=http://h:30000", "/tok")
    assert (m.kind, m.target, m.tokenizer) == (ModelKind.GENERATE, "http://h:30000", "/tok")
    m = parse_model("gpt=https://api.example.com/v1/,model=m1,api_key_env=MY_KEY")
    assert (m.kind, m.target, m.served_model, m.api_key_env) == (
        ModelKind.OPENAI,
        "https://api.example.com/v1",
        "m1",
        "MY_KEY",
    )
    assert parse_model("c=http://h:8000/v1/chat/completions").target == "http://h:8000/v1"
    assert parse_model("x=openai:http://h:8000").kind is ModelKind.OPENAI
    m = parse_model("t=local:./ckpt")
    assert (m.kind, m.target, m.tokenizer) == (ModelKind.LOCAL, "./ckpt", "./ckpt")
    m = parse_model("t=http://h:1,tokenizer=/own", "/default")
    assert m.tokenizer == "/own" and "api_key_env" not in m.describe()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("nourl", "expected NAME=URL"),
        ("bad name=http://h:1", "the name must be"),
        ("a=ftp://h", "not an http(s) URL"),
        ("a=https://h:1", "must be plain http://"),
        ("a=http://h:99999", "invalid port"),
        ("a=http://h:1", "needs its checkpoint's tokenizer"),
        ("a=http://h:1/v1,tokenizer=x", "tokenizer= does not apply to a openai model"),
        ("a=http://h:1/v1,api_key_env=not a var", "is not an environment variable"),
        ("a=http://h:1/v1,foo=1", "unknown setting 'foo'"),
        ("a=http://h:1/v1,model", "is not key=value"),
        ("a=local:", "local: needs a model directory"),
    ],
)
def test_model_errors_are_one_line(text: str, error: str) -> None:
    with pytest.raises(EvalError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_model(text)


def test_sampling_and_spec_identity() -> None:
    with pytest.raises(EvalError, match="--top-p"):
        Sampling(top_p=0)
    with pytest.raises(EvalError, match="--temperature"):
        Sampling(temperature=-1)
    spec = EvalSpec(tasks=(("e", "test/1"),), k=2, sampling=Sampling())
    assert spec.digest() == EvalSpec(tasks=(("e", "test/1"),), k=2, sampling=Sampling()).digest()
    assert spec.digest() != EvalSpec(tasks=(("e", "test/1"),), k=3, sampling=Sampling()).digest()
    assert Sampling(temperature=0).greedy and Sampling().sglang_params()["max_new_tokens"] == 4096


# ---------------------------------------------------------------- chat answers

TOOLS = {"submit_answer", "calculator"}


def answer(message: dict, finish: str = "tool_calls", usage: dict | None = None) -> dict:
    body = {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return body


def fcall(name: object, arguments: object, cid: str = "c1") -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_parse_choice_calls_errors_and_history() -> None:
    turn, history, usage = parse_choice(
        answer(
            {
                "role": "assistant",
                "content": "Let me check.",
                "reasoning_content": "think",
                "tool_calls": [
                    fcall("calculator", '{"expression": "1+1"}'),
                    fcall("submit_answer", '{"answer": 2', "c2"),
                    fcall("nope", "{}", "c3"),
                    fcall("submit_answer", "[1]", "c4"),
                    {"id": "c5", "type": "function"},
                    fcall("calculator", {"expression": "2"}, "c6"),  # a server sending an object
                ],
            },
            usage={"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107},
        ),
        TOOLS,
    )
    calls = turn.parsed.calls
    assert turn.finish_reason == "stop" and turn.parsed.reasoning == "think"
    assert turn.parsed.content == "Let me check."
    assert calls[0].name == "calculator" and calls[0].arguments == {"expression": "1+1"}
    assert [getattr(c, "kind", None) for c in calls] == [
        None,
        "invalid_arguments",
        "unknown_tool",
        "invalid_arguments",
        "parse_error",
        None,
    ]
    assert calls[1].raw == '{"answer": 2'  # what the model wrote, for the trajectory
    assert [c["id"] for c in history["tool_calls"]] == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert history["tool_calls"][5]["function"]["arguments"] == '{"expression":"2"}'
    assert usage == {"prompt_tokens": 100, "completion_tokens": 7}


def test_parse_choice_hostile_answers() -> None:
    with pytest.raises(EngineError, match="no choices"):
        parse_choice({"choices": []}, TOOLS)
    with pytest.raises(EngineError, match="no choices"):
        parse_choice({"choices": "x"}, TOOLS)
    turn, history, usage = parse_choice(
        {"choices": [{"message": {"content": [{"type": "text", "text": "hi"}]}}], "usage": "x"},
        TOOLS,
    )
    assert turn.parsed.content == "hi" and turn.parsed.calls == [] and usage == {}
    many = [fcall("calculator", "{}", f"c{i}") for i in range(MAX_CALLS_PER_TURN + 50)]
    turn, history, _ = parse_choice(answer({"tool_calls": many}), TOOLS)
    assert len(turn.parsed.calls) == MAX_CALLS_PER_TURN + 1
    assert "too many tool calls" in turn.parsed.calls[-1].message
    assert len(history["tool_calls"]) == MAX_CALLS_PER_TURN + 1
    turn, _, _ = parse_choice(answer({"content": None}, finish="length"), TOOLS)
    assert turn.finish_reason == "length" and turn.parsed.content == ""


def test_chat_client_errors_retries_and_bounds() -> None:
    state = {"n": 0}

    def respond(req) -> Reply:
        state["n"] += 1
        text = req.first_user
        if text == "busy" and state["n"] < 3:
            return Reply.http_error(503, "busy, retry")
        if text == "bad":
            return Reply.http_error(400, "max_tokens is too large\nsecond line")
        if text == "huge":
            return Reply.text("x" * (17 << 20))
        return Reply.text("ok")

    async def go(stub_url: str) -> None:
        spec = parse_model(f"m={stub_url}")
        client = ChatClient(spec, attempts=4)
        try:
            await client.preflight()
            assert client.served_model == "stub-model"
            model = ChatModel(client, "sys")
            assert model.start("busy", []) == [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "busy"},
            ]
            turn = await model.sample({"max_new_tokens": 5}, set())
            assert turn.parsed.content == "ok" and state["n"] == 3  # two 503s, then an answer
            assert model.prompt_length > 0 and model.context_length > model.prompt_length
            bad = ChatModel(client, None)
            bad.start("bad", [])
            with pytest.raises(EngineError, match="HTTP 400: max_tokens is too large second line"):
                await bad.sample({"max_new_tokens": 5}, set())
            huge = ChatModel(client, None)
            huge.start("huge", [])
            with pytest.raises(EngineError, match="more than 16 MiB"):
                await huge.sample({"max_new_tokens": 5}, set())
        finally:
            await client.close()

    with OpenAIStub(respond, models=("stub-model",)) as stub:
        asyncio.run(go(stub.url))
        assert all(r.header("authorization") is None for r in stub.requests)


def test_chat_preflight_models_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "must-not-be-sent")
    monkeypatch.setenv("EVAL_TEST_KEY", "sk-mine")

    async def check(url: str, spec_text: str) -> str | None:
        client = ChatClient(parse_model(spec_text.format(url=url)))
        try:
            await client.preflight()
            return client.served_model
        finally:
            await client.close()

    with OpenAIStub(lambda r: Reply.text("OK"), models=("a", "b")) as stub:
        with pytest.raises(EvalError, match=r"serves 2 models \(a, b\): name one with ,model=ID"):
            asyncio.run(check(stub.url, "m={url}"))
        with pytest.raises(EvalError, match="does not serve 'c'"):
            asyncio.run(check(stub.url, "m={url},model=c"))
        assert asyncio.run(check(stub.url, "m={url},model=b,api_key_env=EVAL_TEST_KEY")) == "b"
        auth = [r.header("authorization") for r in stub.requests]
    assert auth == ["Bearer sk-mine"]  # the probe; OPENAI_API_KEY was never sent
    with pytest.raises(EvalError, match="api_key_env=UNSET_EVAL_KEY is not set"):
        ChatClient(parse_model("m=http://127.0.0.1:1/v1,api_key_env=UNSET_EVAL_KEY"))


# ---------------------------------------------------------------- task files


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(env: str, i: int) -> dict:
    return {"prompt": [], "label": str(i), "metadata": {"env": env, "split": "test", "index": i}}


def test_task_file_subset_order_and_errors(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "t.jsonl", [row("a", i) for i in range(10)] + [row("b", 0)])
    all_tasks = tasks_from_file(f, None, None, 1)
    assert [t.key for t in all_tasks if t.env == "a"] == [f"test/{i}" for i in range(10)]
    sub = tasks_from_file(f, ["a"], 4, 1)
    assert len(sub) == 4 and sub == tasks_from_file(f, ["a"], 4, 1)  # seeded: stable
    assert sub != tasks_from_file(f, ["a"], 4, 2)
    assert [t.env for t in interleave(all_tasks)][:3] == ["a", "b", "a"]
    spec_row = {"prompt": [], "metadata": {"env": "a", "task_spec": {"q": 1}}}
    (t,) = tasks_from_file(write_rows(tmp_path / "s.jsonl", [spec_row]), None, None, 1)
    assert t.key.startswith("spec:") and t.label is None
    cases = [
        ("{bad\n", "not JSON"),
        ('{"metadata": 3}\n', "expected a prepare_tasks.py row"),
        ('{"metadata": {"env": "a"}}\n', "not a task row"),
        (json.dumps(row("a", 1)) + "\n" + json.dumps(row("a", 1)) + "\n", "appears twice"),
        ("\n", "no task rows"),
    ]
    for text, error in cases:
        (tmp_path / "bad.jsonl").write_text(text)
        with pytest.raises(EvalError, match=error):
            tasks_from_file(tmp_path / "bad.jsonl", None, None, 1)
    with pytest.raises(EvalError, match="unknown environment 'c'"):
        tasks_from_file(f, ["c"], None, 1)
    with pytest.raises(EvalError, match="cannot read task file"):
        tasks_from_file(tmp_path / "missing.jsonl", None, None, 1)


# ---------------------------------------------------------------- the store


def episode(i: int, run: str) -> tuple[EpisodeRow, list[dict]]:
    traj = Trajectory(
        run_name=run,
        env="gsm8k",
        split="test",
        index=i,
        task_spec=None,
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        turn_rewards=[],
        reward=0.0,
        reward_reduction="last",
        stop_reason="no_tool_call",
        status="completed",
        num_turns=1,
        num_tool_calls=0,
        tool_errors={},
        drift_count=0,
        token_ids=[1, 2, 3],
        prompt_length=2,
        loss_mask=[1],
        logprobs=[-0.5],
        timings={},
        evaluation=True,
    )
    events = trajectory_events(traj)
    r = EpisodeRow("m", "gsm8k", f"test/{i}", 0, events[0]["eventId"], 0.0, False, 1, 0,
                   "no_tool_call", "completed")  # fmt: skip
    return r, events


def test_eval_records_spec_models_and_atomic_episodes(tmp_path: Path) -> None:
    store = TrajectoryStore(tmp_path / "s.db")
    rec = EvalRecords(store)
    spec = {"k": 1, "sampling": {}, "solve_threshold": None, "tasks": [["gsm8k", "test/0"]]}
    assert rec.check("e", spec, "h1") is None and rec.find("e") is None
    eid = rec.ensure("e", spec, "h1")
    assert rec.ensure("e", spec, "h1") == eid and rec.check("e", spec, "h1") == eid
    with pytest.raises(SpecMismatch, match=r"exists with another spec \(k 1 -> 2\)"):
        rec.ensure("e", {**spec, "k": 2}, "h2")
    rec.add_models(eid, [EvalModel("m", "generate", {"target": "u"}, "e/m")])
    rec.add_models(
        eid, [EvalModel("m", "generate", {}, "e/m"), EvalModel("n", "openai", {}, "e/n")]
    )
    assert [m.name for m in rec.models(eid)] == ["m", "n"]
    with pytest.raises(SpecMismatch, match="is a generate model, not openai"):
        rec.add_models(eid, [EvalModel("m", "openai", {}, "e/m")])
    r, events = episode(0, "e/m")
    rec.record(eid, r, events)
    assert rec.episodes(eid) == [r] and rec.envs(eid) == ["gsm8k"]
    assert store.get_rollout(r.rollout_event_id)["run_name"] == "e/m"
    # a failing eval row takes its rollout with it: both or neither
    r2, events2 = episode(1, "e/m")
    bad = EpisodeRow(**{**r2.__dict__, "tool_errors": {"x": object()}})
    with pytest.raises(TypeError):
        rec.record(eid, bad, events2)
    assert store.get_rollout(r2.rollout_event_id) is None and len(rec.episodes(eid)) == 1
    rec.save_report(eid, {"ok": 1})
    listed = rec.list_evals()
    assert listed[0]["models"] == ["m", "n"] and listed[0]["episodes"] == 1
    assert listed[0]["tasks"] == 1 and listed[0]["reported"] == 1
    assert rec.get(eid)["report"] == {"ok": 1} and rec.get(999) is None
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    rec.close()
    store.stop()
