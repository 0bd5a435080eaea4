"""What an eval gives a researcher to share, from one eval of two models (the scripted /generate
stub and the scripted OpenAI stub) on GSM8K and WhoDunIt: the exports (JSONL, Parquet, CSV,
Markdown), the W&B run (offline), sampling arguments passed through and recorded in the
identity, the per-part reward breakdown compared per part, and re-scoring the stored episodes with
the current environment code. The reward parts' path from the env to the bridge (the training
side's trajectories and W&B metrics) is checked here too.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from conftest import env_server
from eval_helpers import (
    TOKENIZER_DIR,
    WHODUNIT_CASES,
    eval_args,
    last_json,
    stored,
    wandb_history,
    write_config,
)
from eval_models import (
    Detective,
    ScriptedSolver,
    chat_responder,
    detective_chat,
    detective_generate,
    generate_responder,
    gsm8k_labels,
)
from openai_stub import OpenAIStub
from sglang_stub import SGLangStub

from tools.eval.__main__ import main

TASKS = 8
K = 2


@pytest.fixture(scope="module")
def evaluated(
    tmp_path_factory: pytest.TempPathFactory, gsm8k_dir: Path, qwen3_tokenizer
) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("eval-outputs")
    labels = gsm8k_labels(gsm8k_dir)
    sharp = Detective({p: 1.0 for p in ("who", "what", "where", "why")}, "o-sharp", WHODUNIT_CASES)
    half = Detective({"what": 1.0, "where": 1.0}, "o-half", WHODUNIT_CASES)
    solver = ScriptedSolver(labels, 0.8, "o-sharp")
    weak = ScriptedSolver(labels, 0.3, "o-half")
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(d / "wb"), WANDB_SILENT="true")
    (d / "wb").mkdir()
    api_key = os.environ.pop("WANDB_API_KEY", None)
    db = d / "store.db"
    try:
        with env_server("--envs", "gsm8k,whodunit", "--db", str(d / "env.db")) as url:
            config = write_config(
                d / "cfg.yaml",
                url,
                envs=("gsm8k", "whodunit"),
                options={"whodunit": {"test_size": WHODUNIT_CASES}},
            )
            with (
                SGLangStub(
                    detective_generate(
                        sharp, qwen3_tokenizer, generate_responder(solver, qwen3_tokenizer)
                    ),
                    tokenizer=qwen3_tokenizer,
                ) as gen,
                OpenAIStub(detective_chat(half, chat_responder(weak))) as chat,
            ):
                args = eval_args(config, db, "--num-tasks", str(TASKS), "--k", str(K), "--json")
                args += ["--model", f"half={chat.url}", "--model", f"sharp={gen.url}"]
                args += ["--tokenizer", str(TOKENIZER_DIR), "--wandb-project", "eval-outputs"]
                args += [
                    "--sampling-args",
                    '{"top_k": 7}',
                    "--sampling-args",
                    'half={"min_p": 0.05}',
                ]
                out, err = io.StringIO(), io.StringIO()
                with redirect_stdout(out), redirect_stderr(err):
                    code = main(args)
                assert code == 0, err.getvalue()[-3000:]
                yield {
                    "report": last_json(out.getvalue()),
                    "stderr": err.getvalue(),
                    "db": db,
                    "out": db.parent / "out",
                    "wandb": d / "wb",
                    "gen": gen,
                    "chat": chat,
                    "args": args,
                    "config": config,
                }
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if api_key is not None:
            os.environ["WANDB_API_KEY"] = api_key


EPISODES = 2 * TASKS * K * 2  # two envs, two models


def test_exports_jsonl_parquet_csv_markdown(evaluated: dict[str, Any]) -> None:
    out = evaluated["out"]
    lines = (out / "episodes.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert len(rows) == EPISODES
    ids = {r[0] for r in stored(evaluated["db"], "SELECT rollout_event_id FROM eval_episodes")}
    assert {r["rollout_id"] for r in rows} == ids
    first = rows[0]
    for key in ("eval", "model", "env", "task", "sample", "reward", "parts", "stop_reason"):
        assert key in first
    assert {"num_turns", "num_tool_calls", "solved", "status"} <= set(first)
    who = [r for r in rows if r["env"] == "whodunit"]
    assert all(set(r["parts"]) == {"who", "what", "where", "why"} for r in who)
    assert {r["parts"]["who"] for r in who if r["model"] == "half"} == {0.0}
    gsm = [r for r in rows if r["env"] == "gsm8k" and r["model"] == "sharp"]
    assert all(r["parts"]["answer"] == r["reward"] and r["parts"]["format"] == 1.0 for r in gsm)

    import pyarrow.parquet as pq

    table = pq.read_table(out / "episodes.parquet")
    assert table.num_rows == EPISODES
    assert {"part_who", "part_answer", "rollout_id", "reward"} <= set(table.column_names)

    scores = list(csv.DictReader((out / "scores.csv").open()))
    assert {(r["env"], r["model"]) for r in scores} >= {("whodunit", "half"), ("gsm8k", "sharp")}
    half = next(r for r in scores if (r["env"], r["model"]) == ("whodunit", "half"))
    assert float(half["part:who"]) == 0.0 and float(half["part:what"]) == 1.0
    assert float(half["reward_lo"]) <= float(half["reward"]) <= float(half["reward_hi"])
    comps = list(csv.DictReader((out / "comparisons.csv").open()))
    who_row = next(r for r in comps if r["env"] == "whodunit" and r["metric"] == "part:who")
    assert (who_row["a"], who_row["b"], float(who_row["diff"])) == ("half", "sharp", 1.0)
    md = (out / "report.md").read_text()
    assert "## Reward parts" in md and "## Models" in md and "| whodunit | who |" in md
    assert json.loads((out / "report.json").read_text())["envs"] == evaluated["report"]["envs"]


def test_reward_breakdown_per_part_and_its_comparison(evaluated: dict[str, Any]) -> None:
    """WhoDunIt: half is right on what and where, never on who; sharp on everything. The report's
    parts say so, and the per-part comparison shows why sharp wins."""
    w = evaluated["report"]["envs"]["whodunit"]
    half, sharp = w["models"]["half"]["components"], w["models"]["sharp"]["components"]
    assert list(half) == ["who", "what", "where", "why"]
    assert (half["who"]["value"], half["what"]["value"], half["where"]["value"]) == (0.0, 1.0, 1.0)
    assert all(sharp[p]["value"] == 1.0 for p in ("who", "what", "where", "why"))
    assert w["models"]["half"]["reward"]["value"] == pytest.approx(0.5)
    (c,) = w["comparisons"]
    assert c["components"]["who"]["delta"]["value"] == 1.0 and c["components"]["who"]["significant"]
    assert (
        c["components"]["what"]["delta"]["value"] == 0.0
        and c["components"]["what"]["tied"] == TASKS
    )
    g = evaluated["report"]["envs"]["gsm8k"]["models"]["sharp"]["components"]
    assert (
        g["answer"]["value"]
        == evaluated["report"]["envs"]["gsm8k"]["models"]["sharp"]["reward"]["value"]
    )
    # the same parts reach the stored trajectory, as training's do
    (meta,) = stored(
        evaluated["db"],
        "SELECT r.metadata FROM rollouts r JOIN eval_episodes e ON e.rollout_event_id = r.event_id "
        "WHERE e.env = 'whodunit' AND e.model = 'half' LIMIT 1",
    )[0:1][0]
    assert json.loads(meta)["reward_parts"] == {"who": 0.0, "what": 1.0, "where": 1.0, "why": 0.0}


def test_sampling_args_reach_both_engines_and_the_identity(evaluated: dict[str, Any]) -> None:
    gen, chat = evaluated["gen"], evaluated["chat"]
    sent = [r.sampling_params for r in gen.requests]
    assert sent and all(p["top_k"] == 7 and "min_p" not in p for p in sent)
    bodies = [r.body for r in chat.requests if "Reply with OK" not in r.first_user]
    assert bodies and all(b["top_k"] == 7 and b["min_p"] == 0.05 for b in bodies)
    report = evaluated["report"]
    assert report["sampling"]["args"] == {"top_k": 7}
    assert report["model_info"]["half"]["sampling_args"] == {"min_p": 0.05}
    assert "sampling_args" not in report["model_info"]["sharp"]
    (meta,) = stored(
        evaluated["db"],
        "SELECT r.metadata FROM rollouts r JOIN eval_episodes e ON e.rollout_event_id = r.event_id "
        "WHERE e.model = 'half' LIMIT 1",
    )[0:1][0]
    assert json.loads(meta)["provenance"]["sampling_params"]["min_p"] == 0.05


def test_other_sampling_args_are_another_eval_and_bad_ones_one_line(
    evaluated: dict[str, Any], capsys
) -> None:
    args = [a for a in evaluated["args"] if a not in ("--wandb-project", "eval-outputs")]
    i = args.index('{"top_k": 7}')
    for bad, says in (
        ('{"top_k": 7', "not JSON"),
        ('{"max_new_tokens": 9}', "'max_new_tokens' is set by the eval"),
        ('nobody={"top_k": 1}', "no --model nobody"),
        ("[1]", "expected JSON or NAME=JSON"),
    ):
        code = main([*args[:i], bad, *args[i + 1 :], "--envs", "gsm8k", "--num-tasks", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and says in err[-1], err
    # the same command with another top_k (shared, or one model's) is another eval: another name
    from tools.eval.__main__ import parse_options
    from tools.eval.plan import plan

    name = evaluated["report"]["name"]
    assert plan(parse_options(args)).name == name
    assert plan(parse_options([*args[:i], '{"top_k": 8}', *args[i + 1 :]])).name != name
    j = args.index('half={"min_p": 0.05}')
    assert plan(parse_options([*args[:j], 'half={"min_p": 0.1}', *args[j + 1 :]])).name != name


def test_wandb_offline_run_with_tables_and_metrics(evaluated: dict[str, Any]) -> None:
    assert "W&B: offline run in" in evaluated["stderr"]
    runs = list(evaluated["wandb"].glob("wandb/offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("run-*.wandb")
    summary = wandb_history(log)
    assert summary["eval/whodunit/half/part/who"] == 0.0
    assert summary["eval/whodunit/sharp-vs-half/part/who_diff"] == 1.0
    assert summary["eval/gsm8k/sharp/reward"] == pytest.approx(
        evaluated["report"]["envs"]["gsm8k"]["models"]["sharp"]["reward"]["value"]
    )
    tables = {p.name.split("_")[0] for p in runs[0].glob("files/media/table/*.table.json")}
    assert {"scores", "comparisons", "episodes"} <= tables


def test_rescore_with_the_current_env_code(
    evaluated: dict[str, Any], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No model is contacted. Today's code reproduces every reward; an env whose scoring changed
    (here GSM8K accepting no answer) is reported episode by episode, exit 1."""
    name = evaluated["report"]["name"]
    gen, chat = evaluated["gen"], evaluated["chat"]
    before = (len(gen.requests), len(chat.requests))
    assert main(["--rescore", name, "--db", str(evaluated["db"])]) == 0
    out = capsys.readouterr().out
    assert f"rescore {name}: {EPISODES} episodes" in out and "nothing changed" in out
    import envs.gsm8k

    monkeypatch.setattr(envs.gsm8k, "answers_match", lambda submitted, label: False)
    assert main(["--rescore", name, "--db", str(evaluated["db"]), "--json"]) == 1
    s = json.loads(capsys.readouterr().out)
    sharp = next(g for g in s["groups"] if (g["env"], g["model"]) == ("gsm8k", "sharp"))
    solved = sum(
        1
        for r in map(json.loads, (evaluated["out"] / "episodes.jsonl").read_text().splitlines())
        if (r["env"], r["model"]) == ("gsm8k", "sharp") and r["reward"] == 1.0
    )
    assert sharp["changed"] == solved > 0 and sharp["reward_after"] == 0.0
    assert sharp["parts_after"]["answer"] == 0.0 and sharp["parts_after"]["format"] == 1.0
    assert all(g["changed"] == 0 for g in s["groups"] if g["env"] == "whodunit")
    assert all(e["changes"][0].startswith("reward 1 -> 0") for e in s["episodes"])
    assert (len(gen.requests), len(chat.requests)) == before
    assert main(["--rescore", "nope", "--db", str(evaluated["db"])]) == 2
    assert "no eval 'nope'" in capsys.readouterr().err


def test_reward_parts_are_read_bounded_and_reach_training_metrics() -> None:
    """contract/env_report.py drops a bad value, never raises; bridge/rewards.py reduces the parts
    as the rewards; bridge/metrics.py logs `reward_parts/<part>` per env."""
    import types

    from bridge.metrics import episode_metrics
    from bridge.rewards import reduce_reward_parts
    from contract.env_report import EnvReport, reward_parts

    assert reward_parts({"a": 1, "b": float("nan"), "c": "x", "d": True, 5: 1.0, "e": 1e9}) == {
        "a": 1.0
    }
    assert reward_parts(["a"]) == {} and reward_parts(None) == {}
    report = EnvReport()
    report.read({"reward_parts": {"s": 0.5}}, 0.5)
    report.read({"reward_parts": {"s": 1.0}}, None)  # no reward: its parts explain nothing
    report.read({"reward_parts": {"s": 1.0, "t": 1.0}}, 1.0)
    assert report.rewarded == [(0.5, {"s": 0.5}), (1.0, {"s": 1.0, "t": 1.0})]
    assert reduce_reward_parts(report.rewarded, "mean") == {"s": 0.75, "t": 1.0}
    assert reduce_reward_parts(report.rewarded, "last") == {"s": 1.0, "t": 1.0}
    assert reduce_reward_parts(report.rewarded, "min") == {"s": 0.5}
    assert reduce_reward_parts([], "mean") == {}
    samples = [
        types.SimpleNamespace(reward=r, metadata={"env": "whodunit", "reward_parts": p})
        for r, p in ((1.0, {"who": 1.0}), (0.0, {"who": 0.0}), (0.5, "junk"))
    ]
    m = episode_metrics(samples)
    assert m["whodunit"]["reward_parts/who"] == 0.5 and m["all"]["reward_parts/who"] == 0.5
