"""train_config.yaml and its schema (contract/config.py): the default file, its commented examples,
bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from contract.config import (
    EnvConfig,
    TrainConfig,
    TrajectoryConfig,
    config_from_env,
    is_hosted,
    load_config,
    parse_config,
)
from contract.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "train_config.yaml"


def test_default_config_trains_on_the_three_envs_with_suited_rewards() -> None:
    cfg = load_config(DEFAULT)
    assert list(cfg.environments) == ["whodunit", "gsm8k", "haiku"]
    w, g, h = (cfg.environments[n] for n in ("whodunit", "gsm8k", "haiku"))
    # Info tools return None, submit_answer gives partial credit: sum is the credit itself.
    assert w.reward_reduction == "sum" and (w.min_reward, w.max_reward) == (0.0, 1.0)
    assert g.reward_reduction == "last"  # the one submission decides
    assert h.reward_reduction in ("mean", "max", "last")
    for env in (w, g, h):
        assert env.splits == ["train"] and env.eval_split == "test"
    assert not any(is_hosted(name) for name in cfg.environments)
    assert cfg.env_server_urls == ["http://127.0.0.1:8080"]
    assert cfg.thinking is False and cfg.system_prompt is None


def _uncomment(text: str, first_line: str) -> str:
    """Uncomment the commented YAML block that starts with `first_line` (indent kept)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"# {first_line}")
    indent = lines[start].index("#")
    lines[start] = " " * indent + first_line
    i = start + 1
    while i < len(lines) and re.match(rf"^ {{{indent}}}#   ", lines[i]):
        lines[i] = " " * indent + lines[i][indent + 2 :]
        i += 1
    assert i > start + 1, f"no block under {first_line!r}"
    return "\n".join(lines)


def test_commented_examples_in_the_default_config_are_valid() -> None:
    text = DEFAULT.read_text()
    text = _uncomment(text, "trajectories:")
    text = _uncomment(text, "GeneralReasoning/Whodunnit:")
    text = text.replace(
        "# options: {data_dir: /path/to/gsm8k}", "options: {data_dir: /path/to/gsm8k}"
    )
    cfg = parse_config(yaml.safe_load(text), "uncommented")
    assert cfg.trajectories == TrajectoryConfig(
        enabled=True, target="local", url=None, spool_dir="runs/spool"
    )
    hosted = cfg.environments["GeneralReasoning/Whodunnit"]
    assert is_hosted("GeneralReasoning/Whodunnit")
    assert hosted.secrets == {"openai_api_key": None} and hosted.reward_reduction == "sum"
    assert cfg.environments["gsm8k"].options == {"data_dir": "/path/to/gsm8k"}


def _check_error(data: object, *needles: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, "cfg.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_unknown_keys_are_named_with_their_place() -> None:
    _check_error(
        {"environments": {"gsm8k": {}}, "run_nmae": "x"}, "cfg.yaml", "unknown key 'run_nmae'"
    )
    _check_error(
        {"environments": {"gsm8k": {"reward_reducton": "sum"}}},
        "unknown key 'environments.gsm8k.reward_reducton'",
    )
    _check_error(
        {"environments": {"gsm8k": {}}, "trajectories": {"spool": "x"}},
        "unknown key 'trajectories.spool'",
    )


def test_bad_values_are_one_line_errors() -> None:
    _check_error(
        {"environments": {"gsm8k": {"reward_reduction": "median"}}},
        "environments.gsm8k.reward_reduction",
    )
    _check_error({"environments": {"gsm8k": {"num_samples": 0}}}, "environments.gsm8k.num_samples")
    _check_error(
        {"environments": {"gsm8k": {"num_eval_samples": -1}}}, "environments.gsm8k.num_eval_samples"
    )
    _check_error({"environments": {"gsm8k": {"splits": []}}}, "environments.gsm8k.splits")
    _check_error({"environments": {"gsm8k": {"max_turns": 0}}}, "environments.gsm8k.max_turns")
    _check_error({"environments": {}}, "at least one environment")
    _check_error({}, "environments")
    _check_error(["environments"], "expected a mapping at the top level")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("environments:\n  gsm8k: {splits: [train]\n  haiku: {}\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path)  # a directory


def test_env_defaults_and_multi_server() -> None:
    cfg = parse_config(
        {"environments": {"gsm8k": {}}, "env_server": ["http://127.0.0.1:1/", "http://127.0.0.1:2"]}
    )
    assert cfg.env_server_urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    env = cfg.environments["gsm8k"]
    assert env == EnvConfig()
    assert (env.splits, env.eval_split, env.num_samples, env.num_eval_samples) == (
        ["train"],
        None,
        None,
        None,
    )
    assert isinstance(cfg, TrainConfig)


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAIN_CONFIG", raising=False)
    assert config_from_env() is None
    monkeypatch.setenv("TRAIN_CONFIG", str(DEFAULT))
    assert list(config_from_env().environments) == ["whodunit", "gsm8k", "haiku"]


def test_relative_spool_dir_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg_dir = tmp_path / "conf"
    cfg_dir.mkdir()
    path = cfg_dir / "train_config.yaml"
    path.write_text("environments: {gsm8k: {}}\ntrajectories: {spool_dir: runs/spool}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a Ray job runs in slime's checkout, not next to the config
    assert load_config(path).trajectories.spool_dir == str(cfg_dir.resolve() / "runs" / "spool")
    path.write_text(f"environments: {{gsm8k: {{}}}}\ntrajectories: {{spool_dir: {tmp_path}/abs}}\n")
    assert load_config(path).trajectories.spool_dir == f"{tmp_path}/abs"


def test_reward_range_must_not_be_inverted() -> None:
    _check_error(
        {"environments": {"gsm8k": {"min_reward": 1.0, "max_reward": 0.0}}},
        "environments.gsm8k",
        "min_reward (1.0) is above max_reward (0.0)",
    )
