"""Chat-template rendering: the first prompt (with `tools=`) and the token deltas appended between
turns.

History is never re-rendered. What the template writes for a tool-response turn (or a user
nudge) is learned once per renderer by rendering a fixed dummy conversation with and
without the new messages and taking the suffix, checking that the shorter rendering is an
exact prefix of the longer one. Qwen3's template renders the last assistant turn
differently from earlier ones (thinking), so the dummy assistant carries reasoning, which
keeps it stable. Placeholder contents let the learned shape be reused with plain string
joins; if a template does not fit that shape, every delta is rendered the slow way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import orjson

from bridge.errors import TemplateError

_CACHE_ENTRIES = 2048  # encoded prompt/delta texts kept per renderer
_CACHE_MAX_TEXT = 4096  # longer texts (characters) are not cached
_M = ["\u241fM1\u241f", "\u241fM2\u241f", "\u241fM3\u241f"]  # placeholder contents nobody writes
_ASSISTANT_MARK = "\u241fA\u241f"


@lru_cache(maxsize=8)
def load_tokenizer(path: str) -> Any:
    """A transformers tokenizer from a local directory or hub name (cached per process)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=True)


@dataclass(frozen=True)
class _Shape:
    """`open + c1 + sep + c2 + ... + close` for a run of messages whose contents are c_i."""

    open: str
    sep: str
    close: str

    def join(self, contents: list[str]) -> str:
        return self.open + self.sep.join(contents) + self.close


@dataclass(frozen=True)
class _PromptShape:
    head_ids: list[int]  # tokens of the fixed head (system + tools), up to a special-token boundary
    rest_open: str  # text between the head and the user content
    close: str  # text after the user content (including the generation prompt)


class ChatRenderer:
    """Renders prompts and deltas for one tokenizer + thinking mode + extra system prompt."""

    def __init__(
        self, tokenizer: Any, enable_thinking: bool = False, system_prompt: str | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.enable_thinking = enable_thinking
        self.system_prompt = system_prompt
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self.eos_token_id: int | None = tokenizer.eos_token_id
        self.eos_text: str | None = tokenizer.eos_token
        self._lock = threading.Lock()
        self._cache: dict[str, list[int]] = {}
        self._prompt_shapes: dict[bytes, _PromptShape | None] = {}
        self._added = sorted(
            {t for t in getattr(tokenizer, "get_added_vocab", dict)().keys() if t}, key=len
        )
        self._end_of_assistant = ""
        self._tool_shape: _Shape | None = None
        self._user_shape: _Shape | None = None
        self._learn_deltas()

    # --- tokenization -------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids: list[int]
        if self._backend is not None:
            ids = self._backend.encode(text, add_special_tokens=False).ids
        else:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def encode_cached(self, text: str) -> list[int]:
        """`encode`, remembering recent texts: the samples of a GRPO group see the same prompt and
        mostly the same tool outputs. The returned list is shared: do not mutate it."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self.encode(text)
            if len(text) <= _CACHE_MAX_TEXT:
                if len(self._cache) >= _CACHE_ENTRIES:
                    self._cache.pop(next(iter(self._cache)))  # oldest first (insertion order)
                self._cache[text] = ids
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str
        if self._backend is not None:
            text = self._backend.decode(ids, skip_special_tokens=False)
        else:
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return text

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The chat template's own text for `messages` (slow path; also used by tests and
        baselines)."""
        text: str = self.tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=self.enable_thinking,
        )
        return text

    # --- first prompt -------------------------------------------------------------------
    def prompt_messages(self, user_text: str) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": user_text})
        return msgs

    def prompt_ids(self, user_text: str, tools: list[dict[str, Any]] | None) -> list[int]:
        """Token ids of system prompt + tools + the task's user message + generation prompt."""
        key = orjson.dumps(tools or [], option=orjson.OPT_SORT_KEYS)
        shape: _PromptShape | Literal[False] | None = self._prompt_shapes.get(key, False)
        if shape is False:
            with self._lock:
                shape = self._learn_prompt(tools)
                self._prompt_shapes[key] = shape
        if shape is None:
            return self.encode(self.render(self.prompt_messages(user_text), tools))
        return shape.head_ids + self.encode_cached(shape.rest_open + user_text + shape.close)

    def _learn_prompt(self, tools: list[dict[str, Any]] | None) -> _PromptShape | None:
        r1 = self.render(self.prompt_messages(_M[0]), tools)
        r2 = self.render(self.prompt_messages(_M[1]), tools)
        if r1.count(_M[0]) != 1:
            return None
        prefix, _, close = r1.partition(_M[0])
        if r2 != prefix + _M[1] + close:
            return None
        cut = self._last_special_start(prefix)
        return _PromptShape(head_ids=self.encode(prefix[:cut]), rest_open=prefix[cut:], close=close)

    def _last_special_start(self, text: str) -> int:
        """Start of the last added (special) token in `text`: tokenization never crosses it."""
        best = 0
        for tok in self._added:
            i = text.rfind(tok)
            if i > best:
                best = i
        return best

    # --- deltas between turns -----------------------------------------------------------
    def _dummy_base(self) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": _ASSISTANT_MARK, "reasoning_content": "r"},
        ]

    def _render_suffix(self, new_messages: list[dict[str, Any]]) -> str:
        """The text the template adds for `new_messages` after an assistant turn.

        Tool responses must leave the earlier rendering untouched (checked: the shorter
        rendering is an exact prefix). A new user message makes Qwen3 drop the thinking of
        earlier turns when re-rendering; we never re-render, so for it we take the text
        after the dummy assistant's end-of-turn marker instead.
        """
        base = self._dummy_base()
        short = self.render(base, add_generation_prompt=False)
        full = self.render(base + new_messages, add_generation_prompt=True)
        if full.startswith(short):
            return full[len(short) :]
        if any(m["role"] == "tool" for m in new_messages):
            raise TemplateError(
                "chat template re-renders earlier turns when tool responses are appended; "
                "cannot build token deltas"
            )
        anchor = _ASSISTANT_MARK + self._end_of_assistant
        if full.count(anchor) != 1:
            raise TemplateError(
                "cannot find where the assistant turn ends in the chat template's rendering"
            )
        return full[full.index(anchor) + len(anchor) :]

    def _learn_shape(self, role: str, extra: dict[str, Any]) -> _Shape | None:
        s1 = self._render_suffix([{"role": role, "content": _M[0], **extra}])
        if s1.count(_M[0]) != 1:
            return None
        open_, _, close = s1.partition(_M[0])
        s2 = self._render_suffix([{"role": role, "content": m, **extra} for m in _M[:2]])
        if not (s2.startswith(open_ + _M[0]) and s2.endswith(_M[1] + close)):
            return None
        sep = s2[len(open_ + _M[0]) : len(s2) - len(_M[1] + close)]
        shape = _Shape(open_, sep, close)
        s3 = self._render_suffix([{"role": role, "content": m, **extra} for m in _M])
        return shape if s3 == shape.join(_M) else None

    def _learn_deltas(self) -> None:
        short = self.render(self._dummy_base(), add_generation_prompt=False)
        if _ASSISTANT_MARK not in short:
            raise TemplateError("chat template drops assistant content")
        self._end_of_assistant = short[short.rindex(_ASSISTANT_MARK) + len(_ASSISTANT_MARK) :]
        self._tool_shape = self._learn_shape("tool", {"tool_call_id": "call_0", "name": "tool"})
        self._user_shape = self._learn_shape("user", {})

    def _lead(self, sampled_text: str) -> str:
        """What closes the sampled turn: the template's end-of-assistant text minus what the model
        wrote."""
        end = self._end_of_assistant
        for j in range(len(end), 0, -1):
            if sampled_text.endswith(end[:j]):
                return end[j:]
        return end

    def tool_delta(self, contents: list[str], sampled_text: str) -> tuple[list[int], str]:
        """Ids (and text) closing the sampled turn, then the template's tool-response turn, then the
        generation prompt for the next assistant turn."""
        if self._tool_shape is not None:
            body = self._tool_shape.join(contents)
        else:
            body = self._render_suffix(
                [
                    {"role": "tool", "content": c, "tool_call_id": f"call_{i}", "name": "tool"}
                    for i, c in enumerate(contents)
                ]
            )
        text = self._lead(sampled_text) + body
        return self.encode_cached(text), text

    def user_delta(self, content: str, sampled_text: str) -> tuple[list[int], str]:
        """Like `tool_delta`, for a user message (the nudge after a turn without a tool call)."""
        if self._user_shape is not None:
            body = self._user_shape.join([content])
        else:
            body = self._render_suffix([{"role": "user", "content": content}])
        text = self._lead(sampled_text) + body
        return self.encode_cached(text), text


_RENDERERS: dict[tuple[str, bool, str | None], ChatRenderer] = {}
_RENDERERS_LOCK = threading.Lock()


def get_renderer(
    tokenizer_path: str, enable_thinking: bool, system_prompt: str | None
) -> ChatRenderer:
    """A cached renderer per (tokenizer, thinking, system prompt). Blocking: call it off the event
    loop."""
    key = (tokenizer_path, enable_thinking, system_prompt)
    r = _RENDERERS.get(key)
    if r is None:
        with _RENDERERS_LOCK:
            r = _RENDERERS.get(key)
            if r is None:
                r = ChatRenderer(load_tokenizer(tokenizer_path), enable_thinking, system_prompt)
                _RENDERERS[key] = r
    return r
