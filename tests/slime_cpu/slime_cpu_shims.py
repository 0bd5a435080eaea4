"""Import-time shims so slime's modules (which import SGLang) load on the CPU, in test subprocesses.

The project's own: tools/slime_cpu.py's import shims (a torchvision stand-in where it is absent,
transformers told torchvision is absent, `AutoConfig.register` tolerating SGLang's duplicates),
the same `run.sh --no-train` puts into a CPU job's processes. Loaded from its file, as
tools/cpu_site/sitecustomize.py does: slime's checkout, first on these subprocesses' path, has a
`tools/` folder of its own. Import this module before anything imports transformers' auto classes
or SGLang.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SHIMS = Path(__file__).resolve().parents[2] / "tools" / "slime_cpu.py"
_spec = importlib.util.spec_from_file_location("_slime_envs_cpu_shims", _SHIMS)
if _spec is None or _spec.loader is None:
    raise ImportError(f"cannot load the CPU import shims from {_SHIMS}")
_module = sys.modules.get(_spec.name)
if _module is None:
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)
_module.install_import_shims()
