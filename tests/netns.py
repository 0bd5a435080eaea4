"""A second network namespace: a process in it is another host as far as the network goes.

It has its own loopback and one veth link to this machine; the default route goes through
it, so it reaches this machine's non-loopback addresses (as another node of a cluster would)
but never this machine's 127.0.0.1. Needs root and `ip netns` (iproute2).

    with network_namespace() as ns:
        subprocess.run(ns.wrap(["python", "client.py"]))   # runs inside it
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


def netns_unavailable() -> str | None:
    """Why a namespace cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"slenvprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Namespace:
    name: str
    host_ip: str
    """This machine's end of the link."""
    ns_ip: str

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def network_namespace() -> Iterator[Namespace]:
    tag = f"{os.getpid() % 100000}{random.randint(0, 99)}"
    name, host_if, ns_if = f"slenv{tag}", f"sleh{tag}", f"slen{tag}"
    octet = random.randint(1, 250)
    host_ip, ns_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        for args in (
            ("addr", "add", f"{ns_ip}/30", "dev", ns_if),
            ("link", "set", ns_if, "up"),
            ("link", "set", "lo", "up"),
            ("route", "add", "default", "via", host_ip),
        ):
            _ip("netns", "exec", name, "ip", *args)
        yield Namespace(name, host_ip, ns_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
