"""A verifiers environment (its classic API, verifiers 0.3) served as an ORS environment.

    tasks    split `train` = the env's dataset, `eval` = its eval dataset (when it has one); task i
             is row i; the label is the row's `answer`
    prompt   the row's prompt messages as text (the system prompt first)
    tools    a ToolEnv (StatefulToolEnv included): one ORS tool per verifiers tool (its own
             schema), plus `submit_answer(answer)`, whose text becomes the final assistant
             message (what ends a ToolEnv rollout); a SingleTurnEnv: `submit_answer(answer)`;
             any other MultiTurnEnv: `respond(message)`, the env's reply messages as its output
    reward   the env's rubric on the episode, when its stop conditions end it (`finished`); the
             rubric's metrics and the stop condition go to the output's metadata

Every ORS call is one assistant message holding that one call (envs/adapters/verifiers_episode.py
plays the rollout). Options: `args`, the keyword arguments of the loader (`load_environment`),
checked against its signature. Not supported (refused with one line): sandbox environments
(SandboxEnv, PythonEnv, CliAgentEnv), EnvGroup, verifiers' OpenEnvEnv, judge rubrics (they call
a model from inside the env server), group reward functions (they score a GRPO group together).

`verifiers_environment(source)` builds the class; envs/registry.py calls it for a verifiers
environment or a `load_environment` function named `module:attr`. verifiers is imported only when
the class is first used.
"""

from __future__ import annotations

import inspect
import json
import signal
import types
from pathlib import Path
from typing import Any, ClassVar

from openreward.environments import TextBlock, ToolOutput, tool
from pydantic import BaseModel, ConfigDict, Field

from envs.adapters.schema_args import schema_model
from envs.errors import AdapterError
from envs.options import parse_options, reset_task_cache
from envs.reporting import ReportingEnvironment

__all__ = ["VerifiersEnvironment", "VerifiersOptions", "verifiers_environment"]

SPLITS = {"train": "get_dataset", "eval": "get_eval_dataset"}
UNSUPPORTED = ("SandboxEnv", "PythonEnv", "CliAgentEnv", "EnvGroup", "OpenEnvEnv")
SUBMIT = "submit_answer"
RESPOND = "respond"


class VerifiersOptions(BaseModel):
    """`environments.<name>.options` of a verifiers environment."""

    model_config = ConfigDict(extra="forbid")

    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the loader (`load_environment(**args)`)."""


class AnswerInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer: str = Field(description="Your final answer. Ends the episode and scores it.")


class RespondInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="Your next message; the environment replies.")


def _quiet_verifiers() -> None:
    """No progress bars; environments built here leave the host's SIGINT/SIGTERM handlers alone
    (verifiers installs its own teardown handlers, which fail off the main thread)."""
    import datasets
    from verifiers.legacy.envs import environment as vf_environment

    datasets.disable_progress_bars()
    shim = types.SimpleNamespace(**{k: getattr(signal, k) for k in dir(signal) if k.isupper()})
    shim.signal = lambda *args: None
    shim.default_int_handler = signal.default_int_handler
    vf_environment.signal = shim


def unsupported(env: Any) -> str | None:
    """Why the adapter cannot serve `env`, or None."""
    import verifiers as vf

    names = [c.__name__ for c in type(env).__mro__]
    hit = next((n for n in UNSUPPORTED if n in names), None)
    if hit is not None:
        return f"{hit} environments are not supported (they need their own sandbox or a group)"
    if not isinstance(env, vf.MultiTurnEnv):
        return f"{type(env).__name__} is not a verifiers MultiTurnEnv"
    rubrics, seen = [env.rubric], []
    while rubrics:
        r = rubrics.pop()
        seen.append(r)
        rubrics += list(getattr(r, "rubrics", []) or [])
    if any(type(r).__name__ == "JudgeRubric" for r in seen):
        return "judge rubrics are not supported (they call a model from inside the env server)"
    if any(r.has_group_rewards for r in seen):
        return "group reward functions are not supported (they score a GRPO group together)"
    return None


def _prompt_text(messages: list[Any]) -> str:
    from envs.adapters.verifiers_episode import message_text

    parts = []
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", "")
        text = message_text(m.get("content") if isinstance(m, dict) else getattr(m, "content", ""))
        parts.append(text if role in ("user", "system") else f"[{role}] {text}")
    return "\n\n".join(p for p in parts if p)


class VerifiersEnvironment(ReportingEnvironment):
    """Base of the classes `verifiers_environment` builds: one verifiers environment per class,
    one verifiers rollout per session."""

    REWARD_RANGE: ClassVar[tuple[float, float] | None] = None  # the rubric's weights decide
    SOURCE: ClassVar[Any] = None
    """The verifiers environment, or the loader that builds it from `options.args`."""
    options: ClassVar[VerifiersOptions] = VerifiersOptions()
    _vf: ClassVar[Any] = None
    _datasets: ClassVar[dict[str, Any]] = {}
    _tool_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, task_spec: Any = None, secrets: Any = None) -> None:
        super().__init__(task_spec or {}, secrets or {})
        cls = type(self)
        env = cls.vf_env()
        split, index = self.task_spec.get("split"), self.task_spec.get("index")
        if split not in cls._datasets or not isinstance(index, int):
            raise ValueError(f"no task {split}[{index}] (splits: {', '.join(cls._datasets)})")
        from envs.adapters.verifiers_episode import Episode

        self.row = dict(cls._datasets[split][index])
        self.episode = Episode(env, self.row)
        self._calls = 0

    # -- the class: built from its source once, again when options change

    @classmethod
    def configure(cls, options: dict[str, Any]) -> None:
        """Apply `environments.<name>.options`: (re)build the verifiers environment."""
        parsed = parse_options(VerifiersOptions, options, cls.__name__)
        if parsed.args and not callable(cls.SOURCE):
            raise ValueError(f"{cls.__name__} options: 'args' needs a loader, not an environment")
        if callable(cls.SOURCE):
            try:
                inspect.signature(cls.SOURCE).bind(**parsed.args)
            except TypeError as e:
                raise ValueError(f"{cls.__name__} options: args: {e}") from None
        cls.options = parsed
        cls._vf = None
        cls.vf_env()

    @classmethod
    def vf_env(cls) -> Any:
        """The verifiers environment, built on first use."""
        if cls._vf is None:
            _quiet_verifiers()
            source = cls.SOURCE
            env = source(**cls.options.args) if callable(source) else source
            why = unsupported(env)
            if why is not None:
                raise AdapterError(f"{cls.__name__}: {why}")
            has = {
                "train": env.dataset is not None or env.dataset_source is not None,
                "eval": env.eval_dataset is not None or env.eval_dataset_source is not None,
            }
            cls._datasets = {s: getattr(env, get)() for s, get in SPLITS.items() if has[s]}
            cls._vf = env
            cls._install_tools(env)
            reset_task_cache(cls)
        return cls._vf

    @classmethod
    def _install_tools(cls, env: Any) -> None:
        import verifiers as vf

        for name in cls._tool_names:
            if name in cls.__dict__:
                delattr(cls, name)
        tools: dict[str, Any] = {}
        if isinstance(env, vf.ToolEnv):
            for spec in env.tool_defs or []:
                tools[spec.name] = _tool_method(spec.name, spec.description, spec.parameters)
            if SUBMIT in tools:
                raise AdapterError(f"{cls.__name__}: the env has its own {SUBMIT!r} tool")
        if isinstance(env, vf.ToolEnv) or isinstance(env, vf.SingleTurnEnv):
            tools[SUBMIT] = tool(_submit)
        else:
            tools[RESPOND] = tool(_respond)
        for name, method in tools.items():
            setattr(cls, name, method)
        cls._tool_names = tuple(tools)

    @classmethod
    def list_tools(cls) -> Any:
        cls.vf_env()
        return super().list_tools()

    @classmethod
    def list_splits(cls) -> list[str]:
        cls.vf_env()
        return list(cls._datasets)

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        cls.vf_env()
        if split not in cls._datasets:
            raise ValueError(f"{cls.__name__} has no split {split!r}")
        ids = cls._datasets[split]["example_id"]
        return [{"split": split, "index": i, "example_id": ids[i]} for i in range(len(ids))]

    @classmethod
    def ground_truth(cls, task_spec: dict[str, Any]) -> str | None:
        """The row's `answer`, the label prepare_tasks.py writes."""
        cls.vf_env()
        rows = cls._datasets.get(task_spec.get("split", ""))
        if rows is None or "answer" not in rows.column_names:
            return None
        answer = rows[int(task_spec["index"])]["answer"]
        return answer if isinstance(answer, str) or answer is None else json.dumps(answer)

    # -- the session: one rollout

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=_prompt_text(self.row.get("prompt") or []))]

    async def play(self, assistant: dict[str, Any]) -> ToolOutput:
        """One assistant message into the rollout; its reply, and the score when it ends."""
        reply = await self.episode.step(assistant)
        from envs.adapters.verifiers_episode import message_text

        text = "\n\n".join(message_text(m.get("content")) for m in reply)
        if not self.episode.done:
            return ToolOutput(blocks=[TextBlock(text=text)])
        reward, metrics, stop = await self.episode.finish()
        return ToolOutput(
            blocks=[TextBlock(text=text or f"The episode is over ({stop}).")],
            reward=reward,
            finished=True,
            metadata={"verifiers": {"metrics": metrics, "stop_condition": stop}},
        )

    async def call_verifiers_tool(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        self._calls += 1
        call = {"id": f"call_{self._calls}", "name": name, "arguments": json.dumps(arguments)}
        return await self.play({"content": None, "tool_calls": [call]})


def _tool_method(name: str, description: str, schema: dict[str, Any]) -> Any:
    args_model = schema_model(name, schema)

    async def method(self: VerifiersEnvironment, params: Any) -> ToolOutput:
        return await self.call_verifiers_tool(name, params.model_dump())

    method.__name__, method.__qualname__, method.__doc__ = name, name, description or name
    method.__annotations__ = {"params": args_model, "return": ToolOutput}
    return tool(method)


async def _submit(self: VerifiersEnvironment, params: AnswerInput) -> ToolOutput:
    """Give your final answer. Ends the episode and scores it."""
    return await self.play({"content": params.answer})


async def _respond(self: VerifiersEnvironment, params: RespondInput) -> ToolOutput:
    """Send your next message to the environment; its reply comes back."""
    return await self.play({"content": params.message})


_submit.__name__ = _submit.__qualname__ = SUBMIT
_respond.__name__ = _respond.__qualname__ = RESPOND


def verifiers_environment(
    source: Any, name: str | None = None, reward_range: tuple[float, float] | None = None
) -> type[VerifiersEnvironment]:
    """An ORS environment class serving `source`: a verifiers environment, or a function that
    builds one (`load_environment`), called with `options.args` when the class is configured or
    first used. `name` is the class name (default: the source's module's last part);
    `reward_range` the range its rubric's rewards lie in (`python -m envs check` tests it)."""
    module = inspect.getmodule(source) if callable(source) else inspect.getmodule(type(source))
    mod_name = getattr(module, "__name__", "verifiers_env")
    cls_name = name or "".join(p.title() for p in mod_name.rsplit(".", 1)[-1].split("_"))
    files = [Path(__file__)]
    if module is not None and getattr(module, "__file__", None):
        files.append(Path(str(module.__file__)))
    attrs: dict[str, Any] = {
        "SOURCE": staticmethod(source) if inspect.isfunction(source) else source,
        "REWARD_RANGE": reward_range,
        "DATA_FILES": tuple(files),
        "__module__": mod_name,
        "__doc__": f"The verifiers environment of {mod_name}, served over ORS.",
        "options": VerifiersOptions(),
        "_vf": None,
        "_datasets": {},
        "_tool_names": (),
    }
    return type(cls_name, (VerifiersEnvironment,), attrs)
