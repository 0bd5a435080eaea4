"""slime's real code for the tests: the vendored source snapshots, unpacked once into .cache/.

The tarballs (slime v0.2.2, v0.3.1, main at 624b824, and the Megatron-LM commit slime pins)
come from $SLIME_VENDOR_DIR, else `<repo>/../shared/vendor`. Tests that need them skip with
the reason when they are absent (a fresh clone elsewhere) or when the CPU packages slime and
SGLang import are not installed (`bash setup.sh --test` installs them). Nothing here is a
stand-in for slime: `slime_pythonpath()` puts the real sources first on a subprocess's path.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENDOR_ENV = "SLIME_VENDOR_DIR"
CACHE = REPO / ".cache" / "slime-vendor"
SHIMS = Path(__file__).resolve().parent / "slime_cpu"

VERSIONS = {
    "v0.2.2": "slime-v0.2.2.tar.gz",
    "v0.3.1": "slime-v0.3.1.tar.gz",
    "main-624b824": "slime-head-624b824.tar.gz",
}
MEGATRON = "megatron-lm-1dcf0daf.tar.gz"
# what slime's rollout, conversion and loss modules import on the CPU (setup.sh --test)
CPU_MODULES = ("ray", "sglang", "sglang_router", "pybase64", "pylatexenc", "PIL", "dill")


def vendor_dir() -> Path:
    return Path(os.environ.get(VENDOR_ENV) or REPO.parent / "shared" / "vendor")


def missing_reason() -> str | None:
    """Why slime's real code cannot run here, or None when it can."""
    d = vendor_dir()
    absent = [n for n in (*VERSIONS.values(), MEGATRON) if not (d / n).is_file()]
    if absent:
        return (
            f"vendored slime sources not found in {d} (set {VENDOR_ENV}): missing "
            f"{', '.join(absent)}"
        )
    missing = [m for m in CPU_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"slime's CPU imports are not installed ({', '.join(missing)}): run `bash "
            "setup.sh --test`"
        )
    return None


def unpack(name: str) -> Path:
    """The folder the tarball `name` unpacks into, unpacked once per tarball size and mtime.

    Parallel test workers share .cache/: one unpacks while the others wait on its lock file."""
    src = vendor_dir() / name
    st = src.stat()
    dest = CACHE / f"{name.removesuffix('.tar.gz')}-{st.st_size}-{int(st.st_mtime)}"
    done = dest / ".unpacked"
    if not done.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / f"{dest.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                shutil.rmtree(dest, ignore_errors=True)  # a copy torn by a killed run
                tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                with tarfile.open(src) as tar:
                    tar.extractall(tmp, filter="data")
                (tmp / ".unpacked").write_text("")
                tmp.rename(dest)
    (root,) = [p for p in dest.iterdir() if p.is_dir()]
    return root


def slime_pythonpath(version: str) -> list[str]:
    """PYTHONPATH entries for a subprocess running slime `version`: CPU shims, slime, Megatron."""
    return [str(SHIMS), str(unpack(VERSIONS[version])), str(unpack(MEGATRON))]
