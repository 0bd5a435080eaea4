"""The command-line flags slime (and the Megatron parser it wraps) accepts, read from their sources.

slime silently ignores flags it does not know, so a misspelled flag is a silent bug.
The launcher checks every flag it emits against the flags defined in the slime and
Megatron checkouts it launches. Flags are found by reading the Python source with `ast`
(`parser.add_argument("--x", ...)`, slime's `reset_arg(parser, "--x", ...)`, and the
dataclass fields of slime's FSDP argument class); nothing is imported or executed.

Regenerate the lists the tests keep under tests/data/slime_flags/ with
`python -m tools.launch.slime_flags FILE... [--dataclass FILE]`.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

# slime files whose parsers define its CLI (the FSDP one only exists up to v0.2.2).
SLIME_ARGUMENT_FILES = (
    "slime/utils/arguments.py",
    "slime/backends/megatron_utils/arguments.py",
    "slime/backends/sglang_utils/arguments.py",
)
SLIME_FSDP_ARGUMENT_FILE = "slime/backends/fsdp_utils/arguments.py"
MEGATRON_ARGUMENT_FILE = "megatron/training/arguments.py"

# slime adds every SGLang ServerArgs field as `--sglang-<field>` at run time (it imports
# sglang to do so), so these cannot be read from slime's source. The launcher emits only
# the ones below; source: sglang/srt/server_args.py, ServerArgs.mem_fraction_static.
SGLANG_FLAGS = frozenset({"--sglang-mem-fraction-static"})


def _str_constants(nodes: list[ast.expr]) -> list[str]:
    return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Attribute):
        return f.attr
    if isinstance(f, ast.Name):
        return f.id
    return None


def _is_boolean_optional(call: ast.Call) -> bool:
    for kw in call.keywords:
        if kw.arg == "action":
            v = kw.value
            name = v.attr if isinstance(v, ast.Attribute) else getattr(v, "id", None)
            return name == "BooleanOptionalAction"
    return False


def flags_in_source(source: str, *, dataclass_fields: bool = False) -> set[str]:
    """Every `--flag` defined by add_argument/reset_arg calls in `source`.

    With `dataclass_fields`, the annotated fields of classes in `source` count too
    (as `--field-name`), the way slime's FSDP backend turns its dataclass into flags.
    """
    tree = ast.parse(source)
    flags: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node) in ("add_argument", "reset_arg"):
            for s in _str_constants(node.args):
                if s.startswith("--"):
                    flags.add(s)
                    if _is_boolean_optional(node):
                        flags.add("--no-" + s[2:])
        elif dataclass_fields and isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    flags.add("--" + stmt.target.id.replace("_", "-"))
    return flags


def flag_choices(source: str, flag: str) -> list[list[str]]:
    """The `choices=[...]` of every definition of `flag` in `source` (one list per definition)."""
    out: list[list[str]] = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and _call_name(node) == "add_argument"
            and flag in _str_constants(node.args)
        ):
            for kw in node.keywords:
                if kw.arg == "choices" and isinstance(kw.value, (ast.List, ast.Tuple)):
                    out.append(_str_constants(list(kw.value.elts)))
    return out


def slime_checkout_flags(slime_path: Path) -> set[str]:
    """The flags a slime checkout defines itself (not Megatron's, not the dynamic `--sglang-*`)."""
    flags: set[str] = set()
    for rel in SLIME_ARGUMENT_FILES:
        p = slime_path / rel
        if p.is_file():
            flags |= flags_in_source(p.read_text())
    fsdp = slime_path / SLIME_FSDP_ARGUMENT_FILE
    if fsdp.is_file():
        flags |= flags_in_source(fsdp.read_text(), dataclass_fields=True)
    return flags


def megatron_checkout_flags(megatron_path: Path) -> set[str]:
    """The flags Megatron-LM's training parser defines (slime parses its CLI with it)."""
    p = megatron_path / MEGATRON_ARGUMENT_FILE
    return flags_in_source(p.read_text()) if p.is_file() else set()


def supported_train_backends(slime_path: Path) -> list[str]:
    """The `--train-backend` choices of a slime checkout; ["megatron"] when it has no such flag."""
    src = (slime_path / "slime/utils/arguments.py").read_text()
    found = flag_choices(src, "--train-backend")
    backends = sorted({c for choices in found for c in choices})
    return backends or ["megatron"]


def read_flag_list(path: Path) -> set[str]:
    """A flag list file: one flag a line, `#` comments."""
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(line)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.launch.slime_flags",
        description="Print the --flags defined in argparse-based Python sources.",
    )
    ap.add_argument("files", nargs="*", type=Path, help="Python files with add_argument calls")
    ap.add_argument(
        "--dataclass",
        action="append",
        default=[],
        type=Path,
        help="a file whose dataclass fields are flags (slime's FSDP arguments)",
    )
    a = ap.parse_args(argv)
    flags: set[str] = set()
    for f in a.files:
        flags |= flags_in_source(f.read_text())
    for f in a.dataclass:
        flags |= flags_in_source(f.read_text(), dataclass_fields=True)
    sys.stdout.write("".join(f"{x}\n" for x in sorted(flags)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
