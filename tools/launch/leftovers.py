"""The trajectories a training job's sink left on disk, delivered by run.sh once the job is over.

The bridge's sink journals every episode before `submit()` returns and spools what it has not
delivered; what slime's processes had not sent when they ended (the last episodes of a
fully-async rollout worker, killed with the job) waits in `trajectories.spool_dir` for the next
process that uses it. run.sh is that process: after the job, with the Ray head it started
stopped (its workers gone, their journals free to take; on a cluster it did not start, once the
processes holding this run's files have ended, LIVE_WAIT_S at most) and its env server still up,
it delivers them, so the store holds the whole run when run.sh returns. With env-server replicas
on a Ray cluster (tools/launch/ray_job.py), the job's entrypoint does the same before they stop,
for the spool it sees: on the shared filesystem (the default, beside the config) that includes the
files of every node's dead processes (a file's owner holds its lock: bridge/owned_files.py); a
spool dir on another node's local disk waits for the next run there.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bridge.trajectory_sink import make_sink
from bridge.trajectory_uploader import TrajectoryUploader
from contract.config import load_config
from contract.errors import ConfigError
from tools.launch.services import answers

__all__ = ["deliver_leftovers", "report_leftovers"]

LIVE_WAIT_S = 15.0
"""How long to wait for the job's processes that still hold spool or journal files to end (Ray
kills a job's actors once its driver has exited, not at once)."""


def deliver_leftovers(config_path: str | Path, timeout_s: float = 60.0) -> str | None:
    """Deliver what the job's sink left in its spool dir (its spool files and the journals of
    its dead processes) to the config's trajectory target; a one-line account, None when
    nothing was left. What cannot be delivered within `timeout_s` stays for the next run."""
    try:
        cfg = load_config(config_path)
    except ConfigError:
        return None
    sink = make_sink(cfg)
    if not isinstance(sink, TrajectoryUploader):
        return None  # trajectories disabled
    spool = sink.spool  # the folder of the config's target (bridge/trajectory_spool.spool_area)
    deadline = time.monotonic() + LIVE_WAIT_S
    while (held := spool.held_by_live_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)  # the job's workers on a cluster run.sh did not start, being killed
    if not spool.pending_files():
        return f"{held} trajectory files of live processes stay in {spool.dir}" if held else None
    if not sink.hosted and not answers(sink.url, timeout=5.0):  # in-job replicas stop with the job
        return (
            f"the job left trajectories in {spool.dir}; {sink.url} is down, the next run sends them"
        )

    async def deliver() -> bool:
        return await sink.close(timeout=timeout_s)

    delivered_all = asyncio.run(deliver())
    stats = sink.stats
    line = (
        f"delivered {stats['delivered']} trajectories the job left in {spool.dir} "
        f"({stats['recovered']} recovered from the journals of its processes"
        + (f", {stats['duplicates']} the store already had" if stats["duplicates"] else "")
        + ")"
    )
    if not delivered_all:
        line += "; the rest stay there for the next run"
    if held:
        line += f"; {held} files of processes still alive stay there"
    return line


def report_leftovers(config_path: str | Path, who: str) -> None:
    """`deliver_leftovers`, its line printed as `who: …`; an error is printed, never raised (the
    job's result stands, the spool stays for the next run)."""
    try:
        said = deliver_leftovers(config_path)
    except Exception as e:
        said = f"could not deliver the job's spooled trajectories: {type(e).__name__}: {e}"
    if said:
        print(f"{who}: {said}", flush=True)
