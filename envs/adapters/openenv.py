"""An OpenEnv environment (`openenv.core.env_server.interfaces.Environment`) served as an ORS
environment, in-process: no Docker, no HTTP between us and it.

    tasks    the env's task API when it has one (list_splits, num_tasks, get_task; the episode
             starts with reset(split=, index=)); else one split `train` of `options.num_tasks`
             seeded episodes (reset(seed=index))
    prompt   the reset observation as text (its one text field, else its fields as JSON; its
             metadata when it has no fields of its own)
    tools    `step`: the Action's fields (minus `metadata`) as its input; an MCPEnvironment:
             one ORS tool per MCP tool (a CallToolAction each)
    reward   each step's observation: `reward` and `done` (`finished`)

Each session gets its own instance (`OpenEnvClass(**options.args)`), closed with the session.
reset and step run on the server's event loop (their async variants when the env has them), under
its per-call time budget: a slow simulator needs a larger `--tool-budget`. Not supported: Docker or
remotely hosted environments (OpenEnv's clients), rubrics that call a model.

`openenv_environment(cls)` builds the class; envs/registry.py calls it for an OpenEnv environment
class named `module:Class`. openenv is imported only when the class is first used (its package
imports gradio: 8-13 s).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import typing
from pathlib import Path
from typing import Any, ClassVar

from openreward.environments import TextBlock, ToolOutput, tool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from contract.task import LABEL_KEYS
from envs.adapters.schema_args import schema_model
from envs.errors import AdapterError
from envs.options import parse_options, reset_task_cache
from envs.reporting import ReportingEnvironment

__all__ = ["OpenEnvEnvironment", "OpenEnvOptions", "openenv_environment"]

BASE = "openenv.core.env_server.interfaces.Environment"
MCP_BASE = "openenv.core.env_server.mcp_environment.MCPEnvironment"
STEP = "step"


class OpenEnvOptions(BaseModel):
    """`environments.<name>.options` of an OpenEnv environment."""

    model_config = ConfigDict(extra="forbid")

    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the environment's constructor."""
    num_tasks: int = Field(default=1000, ge=1, le=10_000_000)
    """Tasks (seeds 0..n-1) of an environment without a task API."""


def _names(cls: type) -> list[str]:
    return [f"{c.__module__}.{c.__name__}" for c in cls.__mro__]


def _run(value: Any) -> Any:
    """A task-API answer, awaited when the env's method is async (on a thread of its own, so a
    caller inside an event loop works too)."""
    if not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wait()).result()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str))


def action_class(env_cls: type) -> type[BaseModel]:
    """The Action class of an OpenEnv environment: `Environment[ActT, ...]`'s first argument,
    else the annotation of `step`'s action parameter."""
    for klass in env_cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            args = typing.get_args(base)
            if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
                return args[0]
    try:
        hint = typing.get_type_hints(env_cls.step).get("action")  # type: ignore[attr-defined]
    except Exception:
        hint = None
    if isinstance(hint, type) and issubclass(hint, BaseModel) and hint.__name__ != "Action":
        return hint
    raise AdapterError(
        f"{env_cls.__name__}: its Action class is not declared (Environment[MyAction, ...] or "
        "step(self, action: MyAction)); pass it: openenv_environment(Env, action=MyAction)"
    )


def observation_text(obs: Any) -> str:
    """What the model reads of an observation: its one text field, else its fields as JSON (its
    metadata when it has no fields of its own, as MCP environments' resets do)."""
    fields = obs.model_dump(mode="json", exclude={"done", "reward", "metadata"})
    fields = fields or _jsonable(obs.metadata or {})
    if len(fields) == 1 and isinstance(next(iter(fields.values())), str):
        return str(next(iter(fields.values())))
    return json.dumps(fields, ensure_ascii=False)


def _mcp_text(obs: Any) -> str:
    error = getattr(obs, "error", None)
    if error is not None:
        return f"Error: {getattr(error, 'message', error)}"
    result = getattr(obs, "result", None)
    content = getattr(result, "content", None)
    if isinstance(content, list):
        return "\n".join(str(getattr(c, "text", c)) for c in content)
    return "" if result is None else str(getattr(result, "data", result))


class OpenEnvEnvironment(ReportingEnvironment):
    """Base of the classes `openenv_environment` builds: one OpenEnv instance per session."""

    REWARD_RANGE: ClassVar[tuple[float, float] | None] = None  # the env's own rewards decide
    OPENENV_CLASS: ClassVar[Any] = None
    ACTION: ClassVar[Any] = None
    options: ClassVar[OpenEnvOptions] = OpenEnvOptions()
    _splits: ClassVar[dict[str, int] | None] = None
    """Split -> number of tasks, from the env's task API (None: no task API)."""
    _probed: ClassVar[bool] = False
    _tool_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, task_spec: Any = None, secrets: Any = None) -> None:
        super().__init__(task_spec or {}, secrets or {})
        self.oe: Any = None
        self._obs: Any = None

    # -- the class

    @classmethod
    def configure(cls, options: dict[str, Any]) -> None:
        """Apply `environments.<name>.options`: constructor arguments, checked against its
        signature."""
        parsed = parse_options(OpenEnvOptions, options, cls.__name__)
        try:
            inspect.signature(cls.OPENENV_CLASS).bind(**parsed.args)
        except TypeError as e:
            raise ValueError(f"{cls.__name__} options: args: {e}") from None
        cls.options = parsed
        cls._probed = False
        cls.probe()

    @classmethod
    def probe(cls) -> None:
        """Read the class-level facts from one instance: task API, tools (MCP)."""
        if cls._probed:
            return
        env = cls.OPENENV_CLASS(**cls.options.args)
        try:
            if callable(getattr(env, "list_splits", None)):
                names = [_split_name(s) for s in _run(env.list_splits())]
                cls._splits = {n: int(_run(env.num_tasks(n))) for n in names}
            else:
                cls._splits = None
            cls._install_tools(env)
        finally:
            env.close()
        cls._probed = True
        reset_task_cache(cls)

    @classmethod
    def _install_tools(cls, env: Any) -> None:
        for name in cls._tool_names:
            if name in cls.__dict__:
                delattr(cls, name)
        tools: dict[str, Any] = {}
        if MCP_BASE in _names(type(env)):
            from openenv.core.env_server.mcp_types import ListToolsAction

            listed = _run(env.step_async(ListToolsAction()))
            for spec in listed.tools:
                tools[spec.name] = _mcp_tool(spec.name, spec.description, spec.input_schema)
        else:
            tools[STEP] = _step_tool(cls.ACTION)
        for name, method in tools.items():
            setattr(cls, name, method)
        cls._tool_names = tuple(tools)

    @classmethod
    def list_tools(cls) -> Any:
        cls.probe()
        return super().list_tools()

    @classmethod
    def list_splits(cls) -> list[str]:
        cls.probe()
        return list(cls._splits) if cls._splits is not None else ["train"]

    @classmethod
    def list_tasks(cls, split: str) -> list[dict[str, Any]]:
        raise NotImplementedError  # num_tasks and get_task: splits may be large

    @classmethod
    def num_tasks(cls, split: str) -> int:
        cls.probe()
        sizes = cls._splits if cls._splits is not None else {"train": cls.options.num_tasks}
        if split not in sizes:
            raise ValueError(f"{cls.__name__} has no split {split!r}")
        return sizes[split]

    @classmethod
    def get_task(cls, split: str, index: int) -> dict[str, Any]:
        if not 0 <= index < cls.num_tasks(split):
            raise IndexError(f"{split}[{index}]")
        if cls._splits is None:
            return {"split": split, "index": index, "seed": index}
        env = cls.OPENENV_CLASS(**cls.options.args)
        try:
            task = _jsonable(_run(env.get_task(split, index)))
        finally:
            env.close()
        return {"split": split, "index": index, "task": task}

    @classmethod
    def ground_truth(cls, task_spec: dict[str, Any]) -> str | None:
        """The task's label (`label`, `ground_truth`, `answer` or `solution`), if it has one."""
        task = task_spec.get("task")
        value = (
            next((task[k] for k in LABEL_KEYS if task.get(k) is not None), None)
            if isinstance(task, dict)
            else None
        )
        return value if value is None or isinstance(value, str) else json.dumps(value)

    # -- the session

    async def _reset(self) -> Any:
        if self._obs is None:
            cls = type(self)
            self.oe = cls.OPENENV_CLASS(**cls.options.args)
            spec = self.task_spec
            if "seed" in spec:
                self._obs = await self.oe.reset_async(seed=spec["seed"])
            else:
                self._obs = await self.oe.reset_async(split=spec["split"], index=spec["index"])
        return self._obs

    async def setup(self) -> None:
        await self._reset()

    async def teardown(self) -> None:
        if self.oe is not None:
            self.oe.close()

    async def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(text=observation_text(await self._reset()))]

    async def act(self, action: Any, text: Any = observation_text) -> ToolOutput:
        """One step; its observation as the tool's output."""
        await self._reset()
        obs = await self.oe.step_async(action)
        reward = None if obs.reward is None else float(obs.reward)
        meta = {"openenv": _jsonable(obs.metadata)} if obs.metadata else None
        return ToolOutput(
            blocks=[TextBlock(text=text(obs))],
            reward=reward,
            finished=bool(obs.done),
            metadata=meta,
        )


def _split_name(split: Any) -> str:
    if isinstance(split, str):
        return split
    if isinstance(split, dict):
        return str(split["name"])
    return str(getattr(split, "name", split))


def _step_tool(action_cls: type[BaseModel]) -> Any:
    fields = {n: (f.annotation, f) for n, f in action_cls.model_fields.items() if n != "metadata"}
    model = create_model(  # type: ignore[call-overload]
        f"{action_cls.__name__}Input", __config__=ConfigDict(extra="forbid"), **fields
    )

    async def step(self: OpenEnvEnvironment, params: Any) -> ToolOutput:
        try:
            action = action_cls(**params.model_dump(exclude_unset=True))
        except ValidationError as e:
            return ToolOutput(blocks=[TextBlock(text=f"Invalid action: {e.errors()[0]['msg']}")])
        return await self.act(action)

    step.__doc__ = (action_cls.__doc__ or "").strip() or f"Take one action ({action_cls.__name__})."
    step.__annotations__ = {"params": model, "return": ToolOutput}
    return tool(step)


def _mcp_tool(name: str, description: str | None, schema: dict[str, Any] | None) -> Any:
    async def method(self: OpenEnvEnvironment, params: Any) -> ToolOutput:
        from openenv.core.env_server.mcp_types import CallToolAction

        return await self.act(
            CallToolAction(tool_name=name, arguments=params.model_dump()), _mcp_text
        )

    method.__name__ = method.__qualname__ = name
    method.__doc__ = description or name
    method.__annotations__ = {"params": schema_model(name, schema), "return": ToolOutput}
    return tool(method)


def openenv_environment(
    env_cls: type,
    action: type[BaseModel] | None = None,
    name: str | None = None,
    reward_range: tuple[float, float] | None = None,
) -> type[OpenEnvEnvironment]:
    """An ORS environment class serving the OpenEnv environment class `env_cls` (each session its
    own instance). `action`: its Action class, when its declaration does not say;
    `reward_range`: the range its rewards lie in (`python -m envs check` tests it)."""
    if BASE not in _names(env_cls):
        raise AdapterError(f"{env_cls.__name__} is not an OpenEnv Environment subclass")
    mcp = MCP_BASE in _names(env_cls)
    action_cls = action or (None if mcp else action_class(env_cls))
    files = [Path(__file__)]
    source = inspect.getsourcefile(env_cls)
    if source:
        files.append(Path(source))
    attrs: dict[str, Any] = {
        "OPENENV_CLASS": env_cls,
        "ACTION": action_cls,
        "REWARD_RANGE": reward_range,
        "DATA_FILES": tuple(files),
        "__module__": env_cls.__module__,
        "__doc__": f"The OpenEnv environment {env_cls.__name__}, served over ORS.",
        "options": OpenEnvOptions(),
        "_splits": None,
        "_probed": False,
        "_tool_names": (),
    }
    return type(name or env_cls.__name__, (OpenEnvEnvironment,), attrs)
