"""What every whole-loop run must show (tests/test_loop.py), read from what slime and the servers
left: slime's per-rollout dumps (`--save-debug-rollout-data`), the trajectory store, the engine's
record of what it sent. Each check returns a list of problems (empty: it holds), so a failing run
says everything that is wrong at once.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from envs.trajectories.packing import unpack_ints

DUMP = re.compile(r"rollout_(eval_)?(\d+)\.pt")


def load_dumps(dump: Path) -> tuple[dict[int, list[dict]], dict[int, list[dict]]]:
    """slime's dumps: {rollout id: samples} for training and for eval."""
    import torch

    train: dict[int, list[dict]] = {}
    evals: dict[int, list[dict]] = {}
    for p in sorted(dump.glob("rollout_*.pt")) if dump.is_dir() else []:
        m = DUMP.fullmatch(p.name)
        if m is None:
            continue
        data = torch.load(p, weights_only=False)
        (evals if m.group(1) else train)[int(m.group(2))] = list(data["samples"])
    return train, evals


def _md(s: dict) -> dict[str, Any]:
    md = s.get("metadata")
    return md if isinstance(md, dict) else {}


def _status(s: dict) -> str:
    st = s.get("status")
    return str(getattr(st, "value", st)).lower()


def rollout_problems(train: dict[int, list[dict]], ids: list[int], group: int, n: int) -> list[str]:
    """The rollouts `ids` each hold `group` GRPO groups of `n` samples."""
    out = []
    if sorted(train) != ids:
        out.append(f"training rollouts {sorted(train)}, expected {ids}")
    for rid, samples in sorted(train.items()):
        groups: dict[Any, list[dict]] = defaultdict(list)
        for s in samples:
            groups[s.get("group_index")].append(s)
        sizes = sorted(len(g) for g in groups.values())
        if sizes != [n] * group:
            out.append(f"rollout {rid}: group sizes {sizes}, expected {group} of {n}")
    return out


def infra_problems(train: dict[int, list[dict]]) -> list[str]:
    """No sample slime trains (it normalises each group) is an infra failure or unfinished."""
    out = []
    for rid, samples in sorted(train.items()):
        for s in samples:
            md = _md(s)
            if md.get("infra_failure") or _status(s) in ("failed", "aborted"):
                out.append(
                    f"rollout {rid}: sample {s.get('index')} ({md.get('env')}) in group "
                    f"{s.get('group_index')} is {_status(s)}, infra_failure="
                    f"{md.get('infra_failure')}, stop {md.get('stop_reason')}"
                )
    return out


def _replies(exchanges: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """The engine's replies that sampled tokens, by the length of their context."""
    by_length: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in exchanges:
        if e.get("output_ids"):
            by_length[len(e["input_ids"])].append(e)
    return by_length


def turns_of(sample: dict, replies: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The engine replies the sample's response is made of, in order: each one's context is the
    sample's tokens up to where its output starts. Each turn: start (position in the response),
    output_ids, logprobs, weight_version."""
    tokens = list(sample["tokens"])
    prompt = len(tokens) - int(sample["response_length"])
    turns, pos = [], prompt
    while pos < len(tokens):
        match = next(
            (
                e
                for e in replies.get(pos, ())
                if tokens[pos : pos + len(e["output_ids"])] == e["output_ids"]
                and tokens[:pos] == e["input_ids"]
            ),
            None,
        )
        if match is None:
            pos += 1  # an appended token (tool result, chat template): no turn starts here
            continue
        turns.append({"start": pos - prompt, **match})
        pos += len(match["output_ids"])
    return turns


def token_problems(
    train: dict[int, list[dict]], exchanges: list[dict[str, Any]], offpolicy_masked: bool
) -> list[str]:
    """Every sample slime would train is token-exact with what the engine sent: every trained
    token (loss mask 1) is one the engine sampled for exactly that context, with its logprob.
    Without off-policy masking every sampled token is trained. With it
    (`--mask-offpolicy-in-partial-rollout`), a resumed sample has every token sampled by weights
    older than its last turn's masked (its per-turn `weight_versions`); slime also masks
    whatever else went back through its buffer, so masked sampled tokens are allowed there."""
    replies = _replies(exchanges)
    out = []
    for rid, samples in sorted(train.items()):
        for s in samples:
            name = f"rollout {rid} sample {s.get('index')}"
            out += _sample_token_problems(name, s, replies, offpolicy_masked)
    return out


def _stale_turns(s: dict, turns: list[dict[str, Any]], offpolicy_masked: bool) -> dict[int, str]:
    """The turns of a resumed sample that must be masked (only with off-policy masking): those
    sampled before its resume (slime's rule: the response as it stood then; the bridge records
    its length, `offpolicy_tokens`), and any other turn sampled by older weights than its last
    turn's unless an engine abort moved the weights on mid-episode (sync mode re-sends that turn
    in place, after the resume)."""
    md = _md(s)
    versions = list(md.get("weight_versions") or [])
    if not offpolicy_masked or not md.get("resumed") or len(versions) != len(turns):
        return {}
    before = int(md.get("offpolicy_tokens") or 0)
    moved_mid_episode = int(md.get("engine_aborts") or 0) > 0
    return {
        i: str(v)
        for i, v in enumerate(versions)
        if turns[i]["start"] < before or (v != versions[-1] and not moved_mid_episode)
    }


def _sample_token_problems(
    name: str, s: dict, replies: dict[int, list[dict[str, Any]]], offpolicy_masked: bool
) -> list[str]:
    mask = list(s.get("loss_mask") or [])
    lps = list(s.get("rollout_log_probs") or [])
    if len(mask) != int(s["response_length"]) or len(lps) != len(mask):
        return [
            f"{name}: loss mask {len(mask)} / logprobs {len(lps)} / response "
            f"{s['response_length']} differ"
        ]
    turns = turns_of(s, replies)
    if not turns:
        return [f"{name}: no engine reply matches its tokens"]
    stale = _stale_turns(s, turns, offpolicy_masked)
    sampled = [False] * len(mask)
    for n, t in enumerate(turns):
        for i, lp in enumerate(t["logprobs"]):
            j = t["start"] + i
            sampled[j] = True
            if n in stale and mask[j]:
                why = f"sampled before the resume or by stale weights ({stale[n]})"
                return [f"{name}: token {j}, {why}, is trained"]
            if mask[j] and not math.isclose(lps[j], lp, abs_tol=1e-5):
                return [f"{name}: token {j} logprob {lps[j]} != the engine's {lp}"]
            if not mask[j] and not offpolicy_masked:
                return [f"{name}: sampled token {j} is masked out"]
    stray = [j for j, m in enumerate(mask) if m and not sampled[j]]
    return [f"{name}: trained tokens {stray[:5]} were never sent by the engine"] if stray else []


def stored_rollouts(db: Path, run_name: str) -> list[dict[str, Any]]:
    """The run's rollouts in the trajectory store: metadata, status and token ids."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT r.status, r.metadata, t.token_ids FROM rollouts r "
            "JOIN runs u ON u.id = r.run_id "
            "LEFT JOIN rollout_tokens t ON t.rollout_event_id = r.event_id WHERE u.name = ?",
            (run_name,),
        ).fetchall()
    finally:
        con.close()
    return [
        {
            "status": status,
            "metadata": orjson.loads(md) if md else {},
            "tokens": unpack_ints(blob) if blob else [],
        }
        for status, md, blob in rows
    ]


def store_problems(
    stored: list[dict[str, Any]], train: dict[int, list[dict]], evals: int
) -> list[str]:
    """Every trained sample is in the store with its tokens, and the store holds `evals` eval
    episodes."""
    out = []
    by_index: dict[Any, list[list[int]]] = defaultdict(list)
    n_eval = 0
    for r in stored:
        md = r["metadata"]
        if md.get("evaluation"):
            n_eval += 1
        else:
            by_index[md.get("sample_index")].append(r["tokens"])
    if n_eval != evals:
        out.append(f"{n_eval} eval episodes stored, expected {evals}")
    for rid, samples in sorted(train.items()):
        for s in samples:
            if list(s["tokens"]) not in by_index.get(s.get("index"), []):
                out.append(f"rollout {rid}: sample {s.get('index')} is not in the store as trained")
    return out
