"""The error trees: every public exception class of the packages is defined in its package's
errors module, drawn in that module's docstring, under the package's root, and keeps the stdlib
base callers catch it by."""

from __future__ import annotations

import ast
import importlib
import pickle
from pathlib import Path

import pytest

from bridge.errors import BridgeError
from contract.errors import ContractError
from envs.errors import EnvsError
from tools.errors import ToolsError

REPO = Path(__file__).resolve().parents[1]
ERROR_MODULES = {
    "contract.errors": ContractError,
    "bridge.errors": BridgeError,
    "tools.errors": ToolsError,
    "envs.errors": EnvsError,
    "envs.server.errors": EnvsError,
    "envs.trajectories.errors": EnvsError,
}
# the stdlib class each keeps (what code outside the tree may catch it as)
STDLIB_BASES = {
    "ConfigError": ValueError,
    "TemplateError": ValueError,
    "LedgerError": ValueError,
    "EngineError": RuntimeError,
    "EnvFailure": RuntimeError,
    "InfraOutageError": RuntimeError,
    "ServiceError": RuntimeError,
    "RequestError": ValueError,
    "EvalError": ValueError,
    "UnknownEnvironment": KeyError,
    "CalculatorError": ValueError,
    "GSM8KDataMissing": RuntimeError,
    "JudgeError": RuntimeError,
    "StoreError": RuntimeError,
    "SpecMismatch": ValueError,
    "ScaffoldError": ValueError,
    "CheckError": RuntimeError,
    "ServerGone": RuntimeError,
    "AdapterError": ValueError,
}
# BaseException on purpose: env code's `except Exception` must not swallow a blown time budget
OUTSIDE_THE_TREE = {"envs/server/budget.py": {"BudgetExceeded"}}


def _exception_classes(path: Path) -> set[str]:
    """Classes in `path` whose bases name an exception (…Error, …Exception, a root)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            names = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            if any(n.endswith(("Error", "Exception", "Failure")) for n in names):
                found.add(node.name)
    return found


def test_every_exception_class_lives_in_an_errors_module() -> None:
    strays = []
    for package in ("contract", "bridge", "envs", "tools"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if path.name == "errors.py":
                continue
            public = {c for c in _exception_classes(path) if not c.startswith("_")}
            public -= OUTSIDE_THE_TREE.get(rel, set())
            strays += [f"{rel}:{c}" for c in sorted(public)]
    assert strays == []


@pytest.mark.parametrize("module", sorted(ERROR_MODULES))
def test_each_errors_module_draws_its_tree_under_one_root(module: str) -> None:
    mod = importlib.import_module(module)
    root = ERROR_MODULES[module]
    doc = mod.__doc__ or ""
    assert root.__name__ in doc
    for name in mod.__all__:
        cls = getattr(mod, name)
        if not issubclass(cls, BaseException):
            continue  # a vocabulary kept beside its error type (OrsReason)
        assert issubclass(cls, root), name
        assert cls.__doc__, name
        assert name in doc, f"{name} is not drawn in {module}'s docstring"
        if name in STDLIB_BASES:
            assert issubclass(cls, STDLIB_BASES[name]), name


def test_errors_pickle_with_their_message() -> None:
    """Errors cross processes (Ray, multiprocessing) and must arrive whole."""
    from bridge.errors import DeliveryError, HTTP11Error
    from envs.errors import UnknownEnvironment
    from envs.server.errors import OrsError

    for err in (
        HTTP11Error("refused", connected=False),
        DeliveryError("413", retry=False),
        UnknownEnvironment("nope", ["gsm8k"]),
        OrsError(404, "not_found", "no such env"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


def test_the_renamed_look_alikes_are_gone() -> None:
    import bridge.http11
    import tools.rollout_only

    assert not hasattr(bridge.http11, "HTTPError")
    assert not hasattr(tools.rollout_only, "RolloutError")
