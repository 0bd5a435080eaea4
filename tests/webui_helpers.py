"""Helpers shared by the web UI tests (test_webui, test_webui_reports, test_eval_webui): headless
Debian Chromium through Playwright (`browser`, `page` fixtures), screenshots, and the trajectories
the pages show."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

from bridge.trajectory import Trajectory

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = "<script>window.__xss = 1</script><img src=x onerror='window.__xss = 2'>"
SHOTS = os.environ.get("WEBUI_SCREENSHOT_DIR")  # optional copy of the screenshots, for humans


def ui_trajectory(tok: Any, i: int, run: str, env: str, evil: bool = False) -> Trajectory:
    user = f"Case {i}: who took the cake? " + (XSS if evil else "")
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful detective."},
        {"role": "user", "content": user},
    ]
    args = {"who": "the butler" if i % 2 else "the cook", "note": XSS if evil else "none"}
    msgs.append(
        {
            "role": "assistant",
            "content": "I will look at the clues first.",
            "reasoning_content": "Clues matter. " + (XSS if evil else "Check the pantry."),
            "tool_calls": [{"id": "c1", "name": "list_clues", "arguments": {}}],
        }
    )
    msgs.append(
        {
            "role": "tool",
            "tool_call_id": "c1",
            "name": "list_clues",
            "content": "flour on the sleeve" + (XSS if evil else ""),
            "reward": 0.0,
            "finished": False,
        }
    )
    msgs.append(
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c2", "name": "submit_answer", "arguments": args}],
        }
    )
    reward = 1.0 if i % 3 else 1 / 3
    msgs.append(
        {
            "role": "tool",
            "tool_call_id": "c2",
            "name": "submit_answer",
            "content": f"score {reward:.2f}",
            "reward": reward,
            "finished": True,
        }
    )
    prompt = tok.apply_chat_template(msgs[:2], tokenize=True, add_generation_prompt=True)
    if not isinstance(prompt, list):
        prompt = prompt["input_ids"]
    seg1 = tok.encode(
        "<think>\nClues matter.\n</think>\n\nI will look at the clues first.",
        add_special_tokens=False,
    )
    env_seg = tok.encode(
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nflour on the sleeve\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False,
    )
    seg2 = tok.encode(
        '<tool_call>\n{"name": "submit_answer", "arguments": {"who": "the butler"}}\n</tool_call>',
        add_special_tokens=False,
    )
    rng = random.Random(i)
    response = seg1 + env_seg + seg2
    mask = [1] * len(seg1) + [0] * len(env_seg) + [1] * len(seg2)
    lps = [(-rng.random() * 3 if m else 0.0) for m in mask]
    return Trajectory(
        run_name=run,
        env=env,
        split="train" if i % 5 else "test",
        index=i,
        task_spec=None,
        messages=msgs,
        turn_rewards=[0.0, reward],
        reward=reward,
        reward_reduction="sum",
        stop_reason="env_finished" if i % 4 else "max_turns",
        status="completed" if i % 4 else "truncated",
        num_turns=2,
        num_tool_calls=2,
        tool_errors={},
        drift_count=0,
        token_ids=list(prompt) + response,
        prompt_length=len(prompt),
        loss_mask=mask,
        logprobs=lps,
        timings={"generate": 1.2, "env": 0.05, "total": 1.3},
        group_index=i // 4,
        sample_index=i,
        extra={"tokenizer": tok.name_or_path},
    )


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / name)
    return path
