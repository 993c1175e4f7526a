"""The soak's hosts: network namespaces joined by a bridge, and partitions between them.

The bridge carries two addresses of the root namespace: one for Redis, one for PostgreSQL, so a
host can be cut from Redis alone (a blackhole route to its address inside the host). Nothing
leaves the bridge's private subnet.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass

PREFIX = "sk"
SUBNET = "10.231.0"
BRIDGE = f"{PREFIX}-br"
REDIS_ADDRESS = f"{SUBNET}.1"
POSTGRES_ADDRESS = f"{SUBNET}.2"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def can_make_hosts() -> str | None:
    """None when this machine can run the soak's hosts, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if ip("netns", "list", check=False).returncode != 0:
        return "`ip netns` is not available"
    return None


@dataclass(frozen=True)
class Host:
    name: str
    address: str

    @property
    def namespace(self) -> str:
        return f"{PREFIX}-{self.name}"

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def pids(self) -> list[int]:
        out = ip("netns", "pids", self.namespace, check=False).stdout
        return [int(pid) for pid in out.split()]

    def cut_from(self, address: str) -> None:
        ip("netns", "exec", self.namespace, "ip", "route", "replace", "blackhole", f"{address}/32")

    def heal(self, address: str) -> None:
        ip("netns", "exec", self.namespace, "ip", "route", "del", "blackhole", f"{address}/32", check=False)


class Network:
    """Creates the bridge and one namespace per host; ``teardown`` removes all of it."""

    def __init__(self, names: list[str]) -> None:
        self.hosts = {name: Host(name, f"{SUBNET}.{10 + index}") for index, name in enumerate(names)}

    def setup(self) -> None:
        self.teardown()  # what a killed earlier soak left behind
        ip("link", "add", BRIDGE, "type", "bridge")
        for address in (REDIS_ADDRESS, POSTGRES_ADDRESS):
            ip("addr", "add", f"{address}/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        for host in self.hosts.values():
            outside, inside = f"{host.namespace}-o", f"{host.namespace}-i"
            ip("netns", "add", host.namespace)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", host.namespace)
            ip("link", "set", outside, "master", BRIDGE)
            ip("link", "set", outside, "up")
            ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside)
            ip("-n", host.namespace, "link", "set", inside, "up")
            ip("-n", host.namespace, "link", "set", "lo", "up")

    def teardown(self) -> None:
        for line in ip("netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{PREFIX}-"):
                ip("netns", "del", name, check=False)
        with contextlib.suppress(Exception):
            ip("link", "del", BRIDGE, check=False)
