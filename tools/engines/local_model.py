"""The CPU engine's model: a Hugging Face causal LM that generates one request at a time, with
SGLang's sampling and logprobs (served by `tools.engines.local_engine`).

Real sampling (temperature, top_p, top_k, min_p; greedy at temperature 0), `max_new_tokens`,
`min_new_tokens`, stop token ids (plus the tokenizer's end tokens), stop strings, and the logprob
of every sampled token. The KV caches of the last few requests are kept, so a multi-turn episode
that resends its context only runs the new tokens (reported as `cached_tokens`).

Logprobs follow SGLang's default: log-softmax of the logits divided by the temperature, before
top-k/top-p/min-p filtering; at temperature 0 (greedy) the logits are not scaled.

torch is an optional dependency (`pip install 'slime-envs[local]'`): imported when a model is
loaded or sampled, never at import.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tools.engines.sglang_api import GenerateRequest, Generation, SamplingParams
from tools.errors import RequestError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Tokens that end a chat turn for common chat templates, added to the model's own EOS ids.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>")


# --------------------------------------------------------------------------- sampling


def _head_mask(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask of the tokens top-k and top-p keep (both measured on the unfiltered distribution).

    Looks at a sorted head of the vocabulary and widens it only until it holds `top_p` of the
    mass, instead of sorting the whole vocabulary every step.
    """
    import torch

    n = probs.numel()
    limit = top_k if top_k > 0 else n
    k = min(n, limit, 1024)
    while True:
        head, order = torch.topk(probs, k)
        mass_before = torch.cumsum(head, dim=-1) - head
        if k >= limit or float(mass_before[-1] + head[-1]) >= top_p:
            break
        k = min(n, limit, k * 8)
    keep_sorted = mass_before < top_p
    keep_sorted[0] = True
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[keep_sorted]] = True
    return keep


def sample_next_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[int, float]:
    """Pick the next token from 1-D float `logits`; returns (token id, its logprob)."""
    import torch

    if params.greedy:
        logprobs = torch.log_softmax(logits, dim=-1)
        token = int(torch.argmax(logits))
        return token, float(logprobs[token])
    logprobs = torch.log_softmax(logits / params.temperature, dim=-1)
    probs = logprobs.exp()
    if params.top_k > 0 or params.top_p < 1.0:
        keep = _head_mask(probs, params.top_k, params.top_p)
    else:
        keep = torch.ones_like(probs, dtype=torch.bool)
    if params.min_p > 0.0:
        keep &= probs >= params.min_p * probs.max()
    filtered = torch.where(keep, probs, torch.zeros_like(probs))
    # Inverse-CDF draw: one uniform number, far cheaper than multinomial over a large vocab.
    cdf = torch.cumsum(filtered, dim=-1)
    u = torch.rand((), generator=generator, dtype=cdf.dtype) * cdf[-1]
    token = int(torch.searchsorted(cdf, u, right=True))
    if token >= cdf.numel() or not keep[token]:  # u rounded onto the very top of the CDF
        token = int(torch.nonzero(keep).max())
    return token, float(logprobs[token])


# --------------------------------------------------------------------------- engine


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """The KV caches of the last few requests, keyed by the token ids they hold.

    A multi-turn episode resends its whole context each turn; reusing the longest cached
    prefix means only the new tokens are run. Entries are used by one worker thread only.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: list[tuple[list[int], Any]] = []  # least recently used first

    def take(self, input_ids: list[int]) -> tuple[int, Any]:
        """Remove and return (reused length, cache) for the best entry, or (0, None).

        At least the last input token is always left to run, to get the next-token logits.
        """
        best, best_len = -1, 0
        for i, (ids, _) in enumerate(self._entries):
            n = _common_prefix_len(ids, input_ids)
            if n > best_len:
                best, best_len = i, n
        if best < 0:
            return 0, None
        ids, cache = self._entries.pop(best)
        keep = min(best_len, len(input_ids) - 1)
        if keep <= 0 or not _crop(cache, len(ids), keep):
            return 0, None
        return keep, cache

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    def put(self, ids: list[int], cache: Any) -> None:
        """Remember `cache`, which holds the KV of exactly `ids`."""
        if self.max_entries <= 0 or cache is None or not ids:
            return
        self._entries.append((ids, cache))
        del self._entries[: -self.max_entries]


def _crop(cache: Any, length: int, keep: int) -> bool:
    """Cut `cache` (holding `length` tokens) down to its first `keep`; False if it cannot be."""
    if keep == length:
        return True
    if not hasattr(cache, "crop") or getattr(cache, "is_croppable", True) is False:
        return False
    try:
        cache.crop(
            -(length - keep)
        )  # a negative argument removes that many tokens (transformers 4 and 5)
    except Exception:  # an unusual cache type: run the prompt from scratch instead
        return False
    return cache.get_seq_length() == keep


class Cancellation(Protocol):
    """An abort flag the generation loop reads between tokens (threading.Event, server.Cancel)."""

    def is_set(self) -> bool: ...


class LocalModel:
    """A loaded model + tokenizer that generates one request at a time (blocking)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_path: str,
        device: str = "cpu",
        prefix_cache_entries: int = 2,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_path = model_path
        self.device = device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.end_token_ids = frozenset(_end_token_ids(model, tokenizer))
        self.prefix_cache = PrefixCache(prefix_cache_entries)
        # Only the last position's logits are needed: skip the vocab projection for the prompt.
        forward_params = inspect.signature(model.forward).parameters
        self._last_logits_only = {
            name: 1 for name in ("logits_to_keep", "num_logits_to_keep") if name in forward_params
        }

    def stop_ids(self, params: SamplingParams) -> frozenset[int]:
        """Token ids that end this request: its stop_token_ids plus the model's end tokens."""
        if params.ignore_eos:
            return frozenset(params.stop_token_ids)
        return self.end_token_ids | frozenset(params.stop_token_ids)

    def check(self, req: GenerateRequest) -> None:
        """RequestError for what this model cannot answer (replay data it does not have)."""
        if req.params.custom_params:
            raise RequestError(
                f"sampling param custom_params={req.params.custom_params!r} is not supported by "
                "the local engine (no top-p replay arrays)"
            )
        if req.return_routed_experts:
            raise RequestError("return_routed_experts is not supported by the local engine")
        if len(req.input_ids) >= self.max_context:
            raise RequestError(
                f"prompt of {len(req.input_ids)} tokens does not fit the model's "
                f"context of {self.max_context}"
            )

    def generate(self, req: GenerateRequest, cancel: Cancellation | None = None) -> Generation:
        """Run one request to completion (blocking); `cancel` makes it finish with abort."""
        import torch

        started = time.monotonic()
        p = req.params
        self.check(req)
        budget = min(p.max_new_tokens, self.max_context - len(req.input_ids))
        stop_ids = self.stop_ids(p)
        generator = None
        if not p.greedy:
            generator = torch.Generator(device="cpu")
            if p.sampling_seed is not None:
                generator.manual_seed(p.sampling_seed)
            else:
                generator.seed()
        out_ids: list[int] = []
        logprobs: list[float] = []
        finish: dict[str, Any] = {"type": "length", "length": budget}
        stop_text: tuple[str, int] | None = None
        cached, past = self.prefix_cache.take(req.input_ids)
        fed: list[int] = req.input_ids[:cached]  # the tokens whose KV `past` holds
        with torch.inference_mode():
            pending = req.input_ids[cached:]
            for step in range(budget):
                if cancel is not None and cancel.is_set():
                    finish = {"type": "abort", "message": "aborted (abort_request or client gone)"}
                    break
                step_input = torch.tensor([pending], dtype=torch.long, device=self.device)
                out = self.model(
                    input_ids=step_input,
                    past_key_values=past,
                    use_cache=True,
                    **self._last_logits_only,
                )
                past = out.past_key_values
                fed += pending
                logits = out.logits[0, -1].float().cpu()
                if step < p.min_new_tokens and stop_ids:
                    logits[[t for t in stop_ids if 0 <= t < logits.numel()]] = float("-inf")
                token, lp = sample_next_token(logits, p, generator)
                out_ids.append(token)
                logprobs.append(lp)
                if token in stop_ids:
                    finish = {"type": "stop", "matched": token}
                    break
                if p.stop and step + 1 >= p.min_new_tokens:
                    stop_text = self._find_stop_string(out_ids, p)
                    if stop_text is not None:
                        finish = {"type": "stop", "matched": stop_text[0]}
                        break
                pending = [token]
        self.prefix_cache.put(fed, past)
        return Generation(
            out_ids,
            logprobs,
            finish,
            self._text(out_ids, finish, stop_text, p),
            time.monotonic() - started,
            cached,
        )

    def _decode(self, ids: list[int], p: SamplingParams) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=p.skip_special_tokens)

    def _find_stop_string(self, ids: list[int], p: SamplingParams) -> tuple[str, int] | None:
        text = self._decode(ids, p)
        hits = [(text.find(s), s) for s in p.stop]
        hits = [(i, s) for i, s in hits if i >= 0]
        if not hits:
            return None
        i, s = min(hits)
        return s, i

    def _text(
        self,
        ids: list[int],
        finish: dict[str, Any],
        stop_text: tuple[str, int] | None,
        p: SamplingParams,
    ) -> str:
        if p.no_stop_trim or finish["type"] != "stop":
            return self._decode(ids, p)
        if stop_text is not None:
            return self._decode(ids, p)[: stop_text[1]]
        return self._decode(ids[:-1], p)  # drop the matched stop token


def _end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(t) for t in eos)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_TOKENS if t in vocab)
    return ids


def load_model(
    model: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    prefix_cache_entries: int = 2,
) -> LocalModel:
    """Load a causal LM + tokenizer from a local directory or a reachable hub name."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise RuntimeError(
            f"the local engine needs torch and transformers (pip install 'slime-envs[local]'): {e}"
        ) from None
    local = Path(model).expanduser()
    source = str(local) if local.exists() else model
    kwargs: dict[str, Any] = {"local_files_only": True} if local.exists() else {}
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"cannot load model {model!r}: {first}") from None
    # transformers wraps PreTrainedModel.to in a decorator whose annotation drops the device
    lm.to(device).eval()  # type: ignore[arg-type]
    return LocalModel(
        lm, tokenizer, model_path=model, device=device, prefix_cache_entries=prefix_cache_entries
    )
