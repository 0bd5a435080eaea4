"""The task a slime sample carries: written by prepare_tasks.py into `metadata`, read by the bridge.

One JSONL row is `{"prompt": [...messages], "label": ..., "metadata": TaskMeta, "tools": [...]}`;
slime copies the row's `tools` into `metadata["tools"]` when run with `--tool-key tools`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.config import EnvConfig, RewardSettings, is_hosted


class TaskMeta(BaseModel):
    """Everything the generate function needs to run one episode."""

    model_config = ConfigDict(extra="allow")  # slime and users may add keys; we keep them

    env: str  # local env name ("whodunit") or hosted "Owner/Name"
    # Local env server(s) of this task when TRAIN_CONFIG is not set (its env_server wins).
    env_server: list[str] = Field(default_factory=list)
    split: str | None = None
    index: int | None = None
    task_spec: dict[str, Any] | None = None
    reward: RewardSettings = Field(default_factory=RewardSettings)
    max_turns: int = 20
    on_no_tool_call: str = "end"
    # OpenAI-style function schemas, as passed to the chat template's `tools=`.
    tools: list[dict[str, Any]] = Field(default_factory=list)
    # Hosted envs: secret name -> value or None (read the upper-cased name from the environment).
    secrets: dict[str, str | None] = Field(default_factory=dict)
    # slime groups its per-source metrics by `metadata["source_name"]` (v0.3+): the env name.
    source_name: str | None = None
    # Fallbacks for the config's global settings when TRAIN_CONFIG is not set (None: default).
    thinking: bool | None = None
    system_prompt: str | None = None
    run_name: str | None = None

    @property
    def hosted(self) -> bool:
        return is_hosted(self.env)

    @model_validator(mode="after")
    def _task_source(self) -> TaskMeta:
        if (self.split is None) != (self.index is None):
            raise ValueError("split and index go together")
        if self.task_spec is None and self.index is None:
            raise ValueError("a task needs split and index, or task_spec")
        return self

    def create_args(self) -> dict[str, Any]:
        """The ORS `/create` task source: split+index when known (the env resolves it), else
        task_spec."""
        if self.index is not None:
            return {"split": self.split, "index": self.index}
        return {"task_spec": self.task_spec}

    @classmethod
    def from_env_config(cls, env: str, cfg: EnvConfig, **fields: Any) -> TaskMeta:
        """Build task metadata from an `environments:` entry plus the task's own fields."""
        return cls(
            env=env,
            reward=RewardSettings(
                reward_reduction=cfg.reward_reduction,
                nonterminal_reward=cfg.nonterminal_reward,
                min_reward=cfg.min_reward,
                max_reward=cfg.max_reward,
            ),
            max_turns=cfg.max_turns,
            on_no_tool_call=cfg.on_no_tool_call,
            secrets=dict(cfg.secrets),
            **fields,
        )


def ors_tool_to_openai(spec: dict[str, Any]) -> dict[str, Any]:
    """An ORS ToolSpec (`name`, `description`, `input_schema`) as an OpenAI function schema."""
    params = spec.get("input_schema") or {"type": "object", "properties": {}}
    return {
        "type": "function",
        "function": {
            "name": spec["name"],
            "description": spec.get("description") or "",
            "parameters": params,
        },
    }


def blocks_to_text(blocks: list[Any]) -> str:
    """Join the text blocks of an ORS prompt or tool output (dicts or SDK models)."""
    out = []
    for b in blocks:
        kind = b.get("type") if isinstance(b, dict) else getattr(b, "type", None)
        if kind == "text":
            out.append(b["text"] if isinstance(b, dict) else b.text)
        elif kind == "image":
            out.append("[image]")
    return "\n".join(out)


# Task-spec keys that hold the ground truth, in order of preference, when the env class
# has no `ground_truth(task_spec)` of its own.
LABEL_KEYS = ("label", "ground_truth", "answer", "solution")


def task_label(task_spec: Any, env_cls: Any = None) -> str | None:
    """The ground truth of a task as a string (slime's `Sample.label`), or None if not exposed.

    Uses the env class's `ground_truth(task_spec)` when it defines one, else the first of
    LABEL_KEYS in the task spec. Non-string values are written as compact JSON.
    """
    getter = getattr(env_cls, "ground_truth", None) if env_cls is not None else None
    if callable(getter):
        value = getter(task_spec)
    elif isinstance(task_spec, dict):
        value = next((task_spec[k] for k in LABEL_KEYS if task_spec.get(k) is not None), None)
    else:
        value = None
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
