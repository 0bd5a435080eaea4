"""slime's processes on a machine without a GPU: the import shims `run.sh --no-train
--engine-addrs` puts into every process of the job (the driver, the rollout manager, the idle
actor, the engines' Ray actors), and nothing else.

run.sh puts `tools/cpu_site/` first on the job's PYTHONPATH only when the job has no GPU; its
`sitecustomize.py` calls `install()` when Python starts. Each shim is applied lazily, when the
module it concerns is imported, so a process that never imports SGLang or slime pays nothing.
None edits slime's sources:

1. `torchvision`: SGLang imports it; the PyPI wheel is CUDA-linked and cannot load beside CPU
   torch, so the CPU setup does not install it. Where it is absent a stand-in package answers
   the imports (any use raises), and transformers is told torchvision is absent.
2. transformers' `AutoConfig.register` tolerates duplicates: SGLang 0.5.15 registers configs that
   newer transformers already ships.
3. `torch_memory_saver`: slime's Megatron actor module imports it at module level
   (slime/backends/megatron_utils/actor.py); where it is absent, a stand-in whose every call
   raises. Never called under `--debug-rollout-only` (slime forces offloading off).
4. slime main's accelerator registry (`slime.utils.accelerator`) raises "No usable accelerator
   was detected" on a CPU (train_actor.py `get_local_gpu_id`, sglang_engine.py
   `_compute_server_args`): a "cpu" backend is registered through slime's own plug-in API,
   `register_accelerator`, at the lowest priority (a real GPU backend always wins).
5. slime v0.3.1 cannot run external engines with `--debug-rollout-only`: its placement-group
   layout gives the actor group zero GPUs while the group still creates its actor and indexes
   the empty bundle list (placement_group.py:106-108 -> IndexError at actor_group.py:123). The
   layout returns what slime main returns for that case (main's placement_group.py:108:
   the actor's GPUs, rollout offset 0); other cases are left to slime.

`install_import_shims()` applies 1 and 2 only (what importing SGLang needs: the CPU engines use it
to report SGLang's server arguments).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

STAND_IN_MODULES = ("torchvision", "torch_memory_saver")
_INSTALLED = "_slime_envs_cpu_shims"
"""sys attribute: which shims this process has (the module may be loaded twice by path)."""


class _Unavailable:
    """What a stand-in module's attributes are: anything, until called."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name}: a CPU stand-in (not installed on this machine)")

    def __getattr__(self, item: str) -> _Unavailable:
        return _Unavailable(f"{self._name}.{item}")


class _StandIn(types.ModuleType):
    def __getattr__(self, item: str) -> Any:
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self.__name__}.{item}")


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `import <root>` and its submodules with stand-ins, for the given roots."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.split(".", 1)[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _StandIn(spec.name)
        module.__path__ = []
        module.__file__ = f"<cpu stand-in {spec.name}>"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


Hook = Callable[[Any], None]


class _HookLoader(importlib.abc.Loader):
    """Runs the real loader, then `hook` on the loaded module."""

    def __init__(self, inner: Any, hook: Hook) -> None:
        self.inner, self.hook = inner, hook

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.inner.exec_module(module)
        try:
            self.hook(module)
        except Exception as e:  # a shim that no longer fits must not break the import
            print(f"slime-envs CPU shim for {module.__name__} failed: {e!r}", file=sys.stderr)

    def __getattr__(self, item: str) -> Any:  # get_code, get_source, is_package, ...
        return getattr(self.inner, item)


class _PostImportHooks(importlib.abc.MetaPathFinder):
    """Calls a hook right after a named module is imported (found by the other finders)."""

    def __init__(self) -> None:
        self.hooks: dict[str, Hook] = {}
        self._busy: set[str] = set()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        hook = self.hooks.get(name)
        if hook is None or name in self._busy:
            return None
        self._busy.add(name)
        try:
            spec = next(
                (
                    s
                    for f in sys.meta_path
                    if f is not self and hasattr(f, "find_spec")
                    for s in [f.find_spec(name, path, target)]
                    if s is not None
                ),
                None,
            )
        finally:
            self._busy.discard(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _HookLoader(spec.loader, hook)
        return spec


def _transformers_without_torchvision(iu: Any) -> None:
    real = iu._is_package_available

    def is_package_available(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torchvision":
            return (False, "N/A")
        return real(name, *args, **kwargs)

    iu._is_package_available = is_package_available
    for fn in ("is_torchvision_available", "is_torchvision_v2_available"):
        if hasattr(iu, fn):
            setattr(iu, fn, lambda: False)


def _register_tolerates_duplicates(ca: Any) -> None:
    register = ca.AutoConfig.register

    def register_once(model_type: str, config: Any, exist_ok: bool = False) -> Any:
        return register(model_type, config, exist_ok=True)

    ca.AutoConfig.register = staticmethod(register_once)


def _cpu_accelerator(acc: Any) -> None:
    """slime main: a "cpu" backend through slime's own `register_accelerator` (v0.3.1 has no
    registry: nothing to do)."""
    register = getattr(acc, "register_accelerator", None)
    if register is None:
        return
    import torch
    from slime.utils.accelerator.torch_accelerator import TorchAccelerator

    class CPUAccelerator(TorchAccelerator):
        name = "cpu"
        device_type = "cpu"
        communication_backend_name = "gloo"

        def _module(self) -> Any:
            return torch.cpu

        def is_available(self) -> bool:
            return True

        def set_device(self, index: Any) -> None:
            return None

        def current_device(self) -> int:
            return 0

        def empty_cache(self) -> None:
            return None

        def mem_get_info(self, device: Any = None) -> tuple[int, int]:
            return (0, 0)

        def memory_allocated(self, device: Any = None) -> int:
            return 0

        def memory_reserved(self, device: Any = None) -> int:
            return 0

    register("cpu", CPUAccelerator, lambda: True, priority=-1000, communication_backends=("gloo",))


def _external_debug_layout(pg: Any) -> None:
    """v0.3.1: external engines + --debug-rollout-only get main's layout (actor GPUs, offset 0)."""
    real = pg._get_placement_group_layout

    def layout(args: Any) -> tuple[int, int]:
        if getattr(args, "rollout_external", False) and getattr(args, "debug_rollout_only", False):
            return args.actor_num_nodes * args.actor_num_gpus_per_node, 0
        result: tuple[int, int] = real(args)
        return result

    pg._get_placement_group_layout = layout


def _stand_in_if_absent(root: str) -> bool:
    """A stand-in for `root` where it is not installed (a real one is left alone); True when
    stood in."""
    if importlib.util.find_spec(root) is not None:
        return False
    sys.meta_path.insert(0, _StandInFinder((root,)))
    return True


def _hooks() -> _PostImportHooks:
    found = next((f for f in sys.meta_path if isinstance(f, _PostImportHooks)), None)
    if found is None:
        found = _PostImportHooks()
        sys.meta_path.insert(0, found)
    return found


def _installed() -> set[str]:
    done: set[str] = getattr(sys, _INSTALLED, set())
    setattr(sys, _INSTALLED, done)
    return done


def install_import_shims() -> None:
    """Shims 1 and 2: enough to import SGLang on a CPU (idempotent)."""
    done = _installed()
    if "import" in done:
        return
    done.add("import")
    shims: dict[str, Callable[[Any], None]] = {
        "transformers.models.auto.configuration_auto": _register_tolerates_duplicates
    }
    if _stand_in_if_absent("torchvision"):
        shims["transformers.utils.import_utils"] = _transformers_without_torchvision
    for module, shim in shims.items():
        if module in sys.modules:  # already imported: the hooks only see later imports
            shim(sys.modules[module])
        else:
            _hooks().hooks[module] = shim


def install() -> None:
    """All five shims, for a process of a slime job without a GPU (idempotent)."""
    install_import_shims()
    done = _installed()
    if "slime" in done:
        return
    done.add("slime")
    _stand_in_if_absent("torch_memory_saver")
    hooks = _hooks()
    hooks.hooks["slime.utils.accelerator"] = _cpu_accelerator
    hooks.hooks["slime.ray.placement_group"] = _external_debug_layout
