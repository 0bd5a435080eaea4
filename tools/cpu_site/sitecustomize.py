"""Run by Python at start-up in every process of a slime job without a GPU: run.sh puts this
folder first on the job's PYTHONPATH (`run.sh --no-train --engine-addrs` on a CPU machine).

It installs slime's CPU import shims (tools/slime_cpu.py). The module is loaded from its file,
not imported as `tools.slime_cpu`: slime's checkout has a `tools/` folder of its own.
"""

import importlib.util
import sys
from pathlib import Path

_SHIMS = Path(__file__).resolve().parent.parent / "slime_cpu.py"
_spec = importlib.util.spec_from_file_location("_slime_envs_cpu_shims", _SHIMS)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)
    _module.install()
