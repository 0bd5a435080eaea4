"""The optional LLM style judge: an OpenAI-compatible endpoint ($LLM_JUDGE_URL) rating a perfect,
on-topic haiku on relevance and imagery; its reply becomes a style score in [0, 1]."""

from __future__ import annotations

import asyncio
import json
import os
import re
import weakref

import httpx

from envs.errors import JudgeError

JUDGE_URL_ENV, JUDGE_MODEL_ENV, JUDGE_KEY_ENV = (
    "LLM_JUDGE_URL",
    "LLM_JUDGE_MODEL",
    "LLM_JUDGE_API_KEY",
)


JUDGE_SYSTEM = (
    "You are a strict poetry editor grading haiku. Rate the haiku on two axes from 0 to 10: "
    "relevance (how clearly it is about the given topic) and imagery (concrete, vivid, fresh "
    "images). "
    'Reply with JSON only, for example {"relevance": 7, "imagery": 5}.'
)


def chat_completions_url(url: str) -> str:
    """Accept a base URL (…/v1) or the full …/chat/completions endpoint."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def parse_judge_reply(content: str) -> float:
    """Style in [0, 1] from a judge reply containing {"relevance": r, "imagery": i} (0-10 each)."""
    match = re.search(r"\{.*?\}", content, re.S)
    if not match:
        raise JudgeError(f"judge reply has no JSON object: {content[:100]!r}")
    try:
        data = json.loads(match.group(0))
        scores = [float(data["relevance"]), float(data["imagery"])]
    except (ValueError, KeyError, TypeError) as e:
        raise JudgeError(
            f"judge reply is not {{relevance, imagery}}: {content[:100]!r} ({e})"
        ) from None
    return sum(min(10.0, max(0.0, s)) for s in scores) / 20.0


_JUDGE_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def judge_client() -> httpx.AsyncClient:
    """The judge's HTTP client on the running loop, made once: building one costs ~20 ms of CPU
    on the loop (TLS context), which once stalled the server for seconds under load."""
    loop = asyncio.get_running_loop()
    client = _JUDGE_CLIENTS.get(loop)
    if client is None or client.is_closed:
        client = _JUDGE_CLIENTS[loop] = httpx.AsyncClient(
            trust_env=False, limits=httpx.Limits(max_connections=64, max_keepalive_connections=16)
        )
    return client


async def judge_style(topic: str, poem: str, timeout: float) -> float:
    """Ask the OpenAI-compatible judge at $LLM_JUDGE_URL for a style score; raises JudgeError on any
    failure."""
    url = os.environ.get(JUDGE_URL_ENV, "")
    headers = {}
    if key := os.environ.get(JUDGE_KEY_ENV):
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "model": os.environ.get(JUDGE_MODEL_ENV) or "judge",
        "messages": [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Topic: {topic}\n\nHaiku:\n{poem}"},
        ],
        "temperature": 0.0,
        "max_tokens": 64,
    }
    try:
        resp = await judge_client().post(
            chat_completions_url(url), json=body, headers=headers, timeout=timeout
        )
        resp.raise_for_status()
        content = resp.json()["choices"][0]["message"]["content"]
    except httpx.TimeoutException:
        raise JudgeError(f"judge timed out after {timeout:g}s") from None
    except httpx.HTTPError as e:
        raise JudgeError(f"judge request failed: {type(e).__name__}: {e}") from None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise JudgeError(f"judge response is not an OpenAI chat completion: {e}") from None
    return parse_judge_reply(str(content))
