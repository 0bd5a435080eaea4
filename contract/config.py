"""train_config.yaml: the one config shared by prepare_tasks.py, the env server, the bridge and
run.sh.

Validated with pydantic; unknown keys are errors that name the key and where it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.errors import ConfigError

RewardReduction = Literal["sum", "mean", "max", "min", "last"]
TRAIN_CONFIG_ENV = "TRAIN_CONFIG"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RewardSettings(_Strict):
    """How per-turn tool rewards become the sample's scalar reward."""

    reward_reduction: RewardReduction = "sum"
    nonterminal_reward: float = 0.0
    min_reward: float = 0.0
    max_reward: float = 1.0

    @model_validator(mode="after")
    def _range(self) -> RewardSettings:
        if self.min_reward > self.max_reward:
            raise ValueError(
                f"min_reward ({self.min_reward}) is above max_reward ({self.max_reward})"
            )
        return self


class EnvConfig(RewardSettings):
    """One entry under `environments:`. A name with a slash is a hosted OpenReward env."""

    splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1)
    eval_split: str | None = None
    # Caps (a seeded random subset when the env has more tasks): training rows over all
    # `splits`, and eval rows from `eval_split`. None: every task.
    num_samples: int | None = Field(default=None, ge=1)
    num_eval_samples: int | None = Field(default=None, ge=1)
    max_turns: int = Field(default=20, ge=1)
    # What a turn without a tool call does: end the episode, or nudge the model once.
    on_no_tool_call: Literal["end", "nudge"] = "end"
    # Hosted envs: name -> value; null reads the upper-cased name from the environment.
    secrets: dict[str, str | None] = Field(default_factory=dict)
    # Environment-specific settings, passed to the env class's `configure(options)`.
    options: dict[str, Any] = Field(default_factory=dict)


class TrajectoryConfig(_Strict):
    """Where finished episodes go."""

    enabled: bool = True
    # "local": this project's server (url below, default env_server); "openreward": hosted
    # OpenReward.
    target: Literal["local", "openreward"] = "local"
    url: str | None = None
    spool_dir: str = "runs/spool"


class TrainConfig(_Strict):
    environments: dict[str, EnvConfig]
    # One URL, or several env-server processes; each session is pinned to one of them.
    env_server: str | list[str] = "http://127.0.0.1:8080"
    thinking: bool = False
    system_prompt: str | None = None
    run_name: str = "slime-envs"
    trajectories: TrajectoryConfig = Field(default_factory=TrajectoryConfig)

    @field_validator("environments")
    @classmethod
    def _non_empty(cls, v: dict[str, EnvConfig]) -> dict[str, EnvConfig]:
        if not v:
            raise ValueError("at least one environment is required")
        return v

    @property
    def env_server_urls(self) -> list[str]:
        urls = [self.env_server] if isinstance(self.env_server, str) else list(self.env_server)
        return [u.rstrip("/") for u in urls]


def is_hosted(env_name: str) -> bool:
    """`Owner/Name` is a hosted OpenReward environment; a bare name is served locally."""
    return "/" in env_name


def _format_validation_error(err: ValidationError, path: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        else:
            parts.append(f"{loc}: {e['msg']}")
    return f"{path}: " + "; ".join(parts)


def parse_config(data: Any, source: str = "<config>") -> TrainConfig:
    """Validate an already-loaded mapping."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read and validate a train_config.yaml; raises ConfigError with a one-line message."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    cfg = parse_config(data, str(p))
    # Relative paths in the config mean relative to the config file, not to whichever directory
    # a process happens to run in (a Ray job runs in slime's checkout).
    spool = Path(cfg.trajectories.spool_dir)
    if not spool.is_absolute():
        cfg.trajectories.spool_dir = str(p.resolve().parent / spool)
    return cfg


def config_from_env() -> TrainConfig | None:
    """The config named by $TRAIN_CONFIG (run.sh sets it), or None when unset."""
    path = os.environ.get(TRAIN_CONFIG_ENV)
    return load_config(path) if path else None
