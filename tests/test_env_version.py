"""An environment's version hashes all of its code: every module of an env cut into a package
(envs/whodunit/, envs/haiku/), its declared data, and nothing of the other environments."""

from __future__ import annotations

import shutil
from pathlib import Path

from contract.provenance import files_hash
from envs.gsm8k import GSM8K
from envs.haiku import TOPICS_FILE, Haiku
from envs.provenance import env_code_files, env_version
from envs.whodunit import WhoDunIt

ENVS = Path(__file__).resolve().parent.parent / "envs"


def test_a_packaged_env_hashes_every_module_of_its_package() -> None:
    assert set(env_code_files(WhoDunIt)) == set((ENVS / "whodunit").rglob("*.py"))
    assert len(env_code_files(WhoDunIt)) >= 7
    assert set(env_code_files(Haiku)) == {*(ENVS / "haiku").rglob("*.py"), TOPICS_FILE}
    assert env_code_files(GSM8K) == [ENVS / "gsm8k.py"]  # a one-module env: that module only
    assert len({env_version(WhoDunIt), env_version(Haiku), env_version(GSM8K)}) == 3


def test_an_edit_to_any_module_changes_the_version(tmp_path: Path) -> None:
    """The version is the hash of those files: changing any one of them (here, in a copy) changes
    it."""
    files = env_code_files(WhoDunIt)
    copies = []
    for f in files:
        dst = tmp_path / f.relative_to(ENVS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
        copies.append(dst)
    before = files_hash(copies, root=tmp_path)
    for c in copies:
        text = c.read_bytes()
        c.write_bytes(text + b"# edited\n")
        assert files_hash(copies, root=tmp_path) != before, c.name
        c.write_bytes(text)
    assert files_hash(copies, root=tmp_path) == before
