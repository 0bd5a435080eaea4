"""`python -m envs new NAME`: write a minimal environment of one's own, ready to check and train.

The project written to `DIR/NAME` (`--dir`, default the current directory):

    NAME/pyproject.toml      the package `NAME-env`; registers `NAME` in the entry point group
                             slime_envs.environments (envs/registry.py)
    NAME/README.md           the steps from here to a training run
    NAME/src/NAME/env.py     the environment: one split, one tool, a reward, its options model
    NAME/src/NAME/__init__.py
    NAME/tests/test_NAME.py  its tests, the conformance check included

The templates are envs/templates/*.tmpl. Nothing is written when NAME is not a new module name
or the directory exists and is not empty.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import re
import sys
from pathlib import Path

from envs.errors import ScaffoldError
from envs.registry import ENVIRONMENTS

__all__ = ["add_arguments", "main", "write_project"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# template -> path in the project ({name} is the package name)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "env.py.tmpl": "src/{name}/env.py",
    "init.py.tmpl": "src/{name}/__init__.py",
    "test_env.py.tmpl": "tests/test_{name}.py",
}
TAKEN = {"envs", "bridge", "contract", "tools", "tests", "prepare_tasks", *ENVIRONMENTS}


def class_name(name: str) -> str:
    """`letter_count` -> `LetterCount`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def check_name(name: str) -> None:
    """Refuse a name that is not a new, lower-case Python module name."""
    if not NAME_RE.match(name) or keyword.iskeyword(name) or not class_name(name):
        raise ScaffoldError(
            f"{name!r} is not a usable name: use a lower-case Python identifier of at most "
            "40 characters (letters, digits, _; starting with a letter), e.g. letter_count"
        )
    if name in TAKEN or importlib.util.find_spec(name) is not None:
        raise ScaffoldError(f"a module named {name!r} already exists here; choose another name")


def write_project(name: str, parent: Path) -> Path:
    """Write the project `parent/name` from the templates; returns its directory."""
    root = (parent / name).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ScaffoldError(f"{root} exists and is not an empty directory; choose another --dir")
    check_name(name)
    values = {
        "__NAME__": name,
        "__CLASS__": class_name(name),
        "__DIR__": str(root),
        "__SLIME_ENVS__": str(Path(__file__).resolve().parent.parent),
    }
    rendered: dict[Path, str] = {}
    for template, target in FILES.items():
        text = (TEMPLATES / template).read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        rendered[root / target.format(name=name)] = text
    for path, text in rendered.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the environment's name: a new lower-case Python module name")
    p.add_argument(
        "--dir", default=".", help="where to write the project NAME/ (default: the current one)"
    )


def main(args: argparse.Namespace) -> int:
    """Entry point of `python -m envs new`."""
    try:
        root = write_project(args.name, Path(args.dir))
    except (ScaffoldError, OSError) as e:
        print(f"envs new: error: {e}", file=sys.stderr)
        return 2
    cls = class_name(args.name)
    print(f"wrote {root}: {cls} in src/{args.name}/env.py, its tests and README.md")
    print(f"next: python -m pip install -e {root} && python -m envs check {args.name}")
    return 0
