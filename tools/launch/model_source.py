"""Where `--model`'s checkpoint comes from: a local directory, the local Hugging Face cache, or
the Hub (downloaded before the job, with progress).

slime's trainer, its tokenizer and SGLang all read `--hf-checkpoint` from disk, so run.sh hands
them a local directory whatever `--model` was:

1. a path that exists: that directory, absolute;
2. a Hub id (`Qwen/Qwen3-4B`) whose snapshot is in the local cache (read offline, as
   huggingface_hub's own cache lookup does): that snapshot;
3. a Hub id the Hub answers for (one request, bounded by HUB_TIMEOUT whatever DNS does): the
   snapshot directory the download will fill; `tools.launch.execute` downloads it first;
4. otherwise a MISSING line with a command that fixes it: the Hub is unreachable or offline
   (pass a local directory), the Hub has no such model, or a local path that does not exist
   (the `hf download` that creates it).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from tools.launch import prerequisites as pre
from tools.launch.paths import absolute

# Seconds the Hub gets to answer whether it has the model (DNS included).
HUB_TIMEOUT = 8.0
# The organisation of a model family on the Hub, for the fix line of a missing local path.
_FAMILY_ORG = {"qwen": "Qwen", "deepseek": "deepseek-ai", "llama": "meta-llama"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """The local directory --model names, or will name once downloaded."""

    given: str
    """--model as given."""
    path: str
    """The checkpoint directory, absolute (for a download: the snapshot it will fill)."""
    name: str
    """The model's name (`Qwen3-4B`): how slime's scripts/models/<name>.sh is found."""
    check: pre.Check
    download: tuple[str, str] | None = None
    """(repo id, revision) to download before the job, or None."""


def resolve_model(model: str, cwd: str | None = None) -> ModelSource:
    """Where --model's checkpoint is, or will be, on this machine."""
    name = Path(model.rstrip("/")).name
    local = absolute(model, cwd)
    if Path(local).is_dir():
        return ModelSource(model, local, name, pre.Check("model", True, local))
    if Path(local).exists():
        return _missing(model, local, name, f"--model {model} is a file, not a checkpoint dir")
    if not _HUB_ID.match(model) or model.startswith((".", "~")):
        return _missing_local_path(model, local, name)
    return _from_hub(model, name)


def _missing(model: str, path: str, name: str, detail: str, fix: str = "") -> ModelSource:
    return ModelSource(model, path, name, pre.Check("model", False, detail, fix))


def _missing_local_path(model: str, local: str, name: str) -> ModelSource:
    """A fix that creates the directory the user named: the Hub id the cache or the family
    names, else the search that finds it."""
    repo = _cached_repo_named(name) or _family_repo(name)
    if repo is not None:
        fix = f"hf download {repo} --local-dir {local} (or pass --model {repo})"
    else:
        fix = f"hf models ls --search {name} (then bash run.sh --model ORG/{name} ...)"
    return _missing(model, local, name, f"--model {model}: no such directory ({local})", fix)


def _cached_repo_named(name: str) -> str | None:
    """A model repo in the local Hugging Face cache whose name is `name` (any organisation)."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE)
    if not root.is_dir():
        return None
    for entry in sorted(root.glob("models--*--*")):
        parts = entry.name.split("--")
        if len(parts) == 3 and parts[2].lower() == name.lower():
            return f"{parts[1]}/{parts[2]}"
    return None


def _family_repo(name: str) -> str | None:
    org = next((o for k, o in _FAMILY_ORG.items() if name.lower().startswith(k)), None)
    return f"{org}/{name}" if org else None


def cached_snapshot(repo_id: str) -> str | None:
    """The local cache's snapshot of `repo_id` (its main revision), read offline; None when it is
    not there."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json")
    return str(Path(config).parent) if isinstance(config, str) else None


def _from_hub(repo_id: str, name: str) -> ModelSource:
    from huggingface_hub import constants

    cache = constants.HF_HUB_CACHE
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None:
        detail = f"{repo_id} from the local Hugging Face cache: {snapshot}"
        return ModelSource(repo_id, snapshot, name, pre.Check("model", True, detail))
    local_copy = f"bash run.sh --model /path/to/{name} ... (hf download {repo_id} --local-dir "
    local_copy += f"./{name} makes one where the Hub answers)"
    if constants.HF_HUB_OFFLINE:
        return _missing(
            repo_id,
            repo_id,
            name,
            f"--model {repo_id} is not in the local Hugging Face cache ({cache}) and "
            "HF_HUB_OFFLINE is set, so run.sh does not download it",
            f"unset HF_HUB_OFFLINE (run.sh then downloads it), or pass a local copy: {local_copy}",
        )
    revision, error = hub_revision(repo_id)
    if revision is None:
        return _missing(repo_id, repo_id, name, f"--model {repo_id}: {error}", local_copy)
    folder = Path(cache) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision
    detail = (
        f"{repo_id} is not in the local Hugging Face cache: downloaded from the Hub (revision "
        f"{revision[:12]}) into {folder} before the job"
    )
    return ModelSource(
        repo_id, str(folder), name, pre.Check("model", True, detail), (repo_id, revision)
    )


def hub_revision(repo_id: str, timeout: float = HUB_TIMEOUT) -> tuple[str | None, str]:
    """(the commit the Hub serves for `repo_id`, "") or (None, why not), within `timeout`
    seconds whatever the resolver does (the request runs in a daemon thread)."""
    result: list[tuple[str | None, str]] = []

    def ask() -> None:
        result.append(_ask_hub(repo_id, timeout))

    thread = threading.Thread(target=ask, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return None, f"the Hub did not answer within {timeout:g}s (unreachable from here)"
    return result[0]


def _ask_hub(repo_id: str, timeout: float) -> tuple[str | None, str]:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi().model_info(repo_id, timeout=timeout)
    except GatedRepoError:
        return None, "the Hub gates this model: accept its terms on the Hub and run hf auth login"
    except RepositoryNotFoundError:
        return None, f"the Hub at {constants.ENDPOINT} has no model {repo_id} (check the id)"
    except Exception as e:  # the network's many ways of failing: all mean unreachable here
        why = " ".join(str(e).split())[:160] or type(e).__name__
        return None, f"the Hub at {constants.ENDPOINT} is unreachable from here ({why})"
    if not info.sha:
        return None, f"the Hub at {constants.ENDPOINT} named no revision for {repo_id}"
    return info.sha, ""


def download(repo_id: str, revision: str) -> str:
    """Download `repo_id` at `revision` into the Hugging Face cache, with huggingface_hub's
    progress bars; the snapshot directory."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, revision=revision)
