"""Import-time shims so slime's modules (which import SGLang) load on the CPU, in test subprocesses.

Two, as the vendor README describes, and nothing else:
  * SGLang imports `torchvision`, whose PyPI wheel is CUDA-linked and cannot load beside CPU
    torch: a stand-in package answers those imports (any use raises), and transformers is told
    torchvision is absent.
  * SGLang 0.5.15 registers configs that newer transformers ships already: registering tolerates
    the duplicate.
Import this module before anything imports transformers' auto classes or SGLang.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any


class _Unavailable:
    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name}: torchvision is a test stand-in here (not installed)")

    def __getattr__(self, item: str) -> _Unavailable:
        return _Unavailable(f"{self._name}.{item}")


class _StandIn(types.ModuleType):
    def __getattr__(self, item: str) -> Any:
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self.__name__}.{item}")


class _TorchvisionFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    sys.meta_path.insert(0, _TorchvisionFinder())
    import transformers.utils as tu
    import transformers.utils.import_utils as iu

    real = iu._is_package_available

    def is_package_available(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torchvision":
            return (False, "N/A")
        return real(name, *args, **kwargs)

    iu._is_package_available = is_package_available
    for mod in (iu, tu):
        for fn in ("is_torchvision_available", "is_torchvision_v2_available"):
            if hasattr(mod, fn):
                setattr(mod, fn, lambda: False)

    from transformers import AutoConfig

    register = AutoConfig.register

    def register_once(model_type: str, config: Any, exist_ok: bool = False) -> Any:
        return register(model_type, config, exist_ok=True)

    AutoConfig.register = staticmethod(register_once)


install()
