"""A cellular link made of Linux's own network stack: three network namespaces in a row.

    kiosk (10.77.1.2) ──veth── relay (10.77.1.1 | 10.77.2.1) ──veth── central (10.77.2.2)

The kiosk's agent runs in the kiosk namespace, mosquitto and the receiver in the central
one. The relay namespace routes between them through a TUN device whose process
(tests/support/tun_relay.py) holds each packet for the link's one-way delay. Every address
lives only inside namespaces this module made: nothing touches the host's own network, and
parallel runs do not collide (each run's names carry its pid and a counter; interfaces
exist only inside its namespaces). Namespaces left by a run that died are removed by the
next one (their pid is gone).

What a link does to packets (bandwidth, loss, black holes, NAT, flaps) is in
tests/support/link_faults.py; this module only builds and tears down the plumbing.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.support.paths import ROOT

PREFIX = "kiosknet"
KIOSK_NET = "10.77.1.0/24"
KIOSK_ADDR, KIOSK_GW = "10.77.1.2", "10.77.1.1"
CENTRAL_ADDR, CENTRAL_GW = "10.77.2.2", "10.77.2.1"
# Table for policy routing in the relay: whatever arrives on a veth goes to the TUN device.
TUN_TABLE = "100"
_counter = itertools.count(1)


class NetnsUnavailable(AssertionError):
    """The host cannot make network namespaces: said plainly, and a failure, never a skip."""


def require_netns() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root (network namespaces, veth pairs and TUN devices need "
                        "CAP_NET_ADMIN)")
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")):
        if not _which(tool):
            problems.append(f"`{tool}` is missing: run `make fault-tools` (installs {package})")
    if not Path("/dev/net/tun").exists():
        problems.append("/dev/net/tun is missing (the latency relay needs a TUN device)")
    if problems:
        raise NetnsUnavailable("the network-profile tests cannot build their namespaces: "
                               + "; ".join(problems))


def _which(tool: str) -> bool:
    return any(Path(d, tool).exists() for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"))


def ip(*args: str) -> str:
    return sh("ip", *args)


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def remove_stale() -> None:
    """Namespaces a killed run left behind: its pid (in the name) is no longer alive."""
    for line in ip("netns", "list").splitlines():
        match = re.match(rf"({PREFIX}-(\d+)-\d+-\w+)", line)
        if match and not Path(f"/proc/{match.group(2)}").exists():
            subprocess.run(["ip", "netns", "delete", match.group(1)], capture_output=True)


class Topology:
    """The three namespaces, their veth pairs, routes and the delaying relay."""

    def __init__(self, up_delay_ms: float, down_delay_ms: float) -> None:
        require_netns()
        remove_stale()
        run = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        self.kiosk, self.relay, self.central = f"{run}-k", f"{run}-r", f"{run}-c"
        # Interface names are per namespace, so short fixed names never collide across runs.
        self.kiosk_if, self.relay_kiosk_if = "wan0", "cell0"
        self.central_if, self.relay_central_if = "lan0", "core0"
        self.tun = "delay0"
        self._relay_proc: subprocess.Popen[bytes] | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            self._build()
            self._start_relay(up_delay_ms, down_delay_ms)
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for ns in (self.kiosk, self.relay, self.central):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", self.kiosk_if, "netns", self.kiosk, "type", "veth",
           "peer", "name", self.relay_kiosk_if, "netns", self.relay)
        ip("link", "add", self.central_if, "netns", self.central, "type", "veth",
           "peer", "name", self.relay_central_if, "netns", self.relay)
        for ns, dev, addr in ((self.kiosk, self.kiosk_if, KIOSK_ADDR + "/24"),
                              (self.relay, self.relay_kiosk_if, KIOSK_GW + "/24"),
                              (self.relay, self.relay_central_if, CENTRAL_GW + "/24"),
                              (self.central, self.central_if, CENTRAL_ADDR + "/24")):
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", self.kiosk, "route", "add", "default", "via", KIOSK_GW)
        ip("-n", self.central, "route", "add", "default", "via", CENTRAL_GW)
        # The relay forwards, through its TUN device: a packet from either veth is routed to
        # the TUN (table 100); the relay process writes it back after the delay, and from
        # the TUN the main table sends it on. Reverse-path filtering would drop what comes
        # back from the TUN with a source that routes elsewhere.
        ip("-n", self.relay, "tuntap", "add", "dev", self.tun, "mode", "tun")
        ip("-n", self.relay, "link", "set", self.tun, "up")
        ip("-n", self.relay, "route", "add", "default", "dev", self.tun, "table", TUN_TABLE)
        for dev in (self.relay_kiosk_if, self.relay_central_if):
            ip("-n", self.relay, "rule", "add", "iif", dev, "lookup", TUN_TABLE)
        self.exec_check(self.relay, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                        "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                        f"net.ipv4.conf.{self.tun}.rp_filter=0",
                        f"net.ipv4.conf.{self.relay_kiosk_if}.rp_filter=0",
                        f"net.ipv4.conf.{self.relay_central_if}.rp_filter=0")

    def _start_relay(self, up_ms: float, down_ms: float) -> None:
        self._relay_proc = self.spawn(self.relay, [sys.executable, "-m", "tests.support.tun_relay",
                                                   self.tun, KIOSK_NET, str(up_ms), str(down_ms)],
                                      stdout=subprocess.PIPE)
        assert self._relay_proc.stdout is not None
        line = self._relay_proc.stdout.readline()
        if b"relay ready" not in line:
            raise RuntimeError(f"the delay relay did not start: {line!r}")

    # --- running things inside ------------------------------------------------------------

    def spawn(self, ns: str, argv: list[str], **popen: object) -> subprocess.Popen[bytes]:
        """A process inside namespace ``ns``; stopped by close() if still running."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.update(popen.pop("env", {}))  # type: ignore[call-overload]
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env, **popen)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def exec_check(self, ns: str, *argv: str) -> str:
        return sh("ip", "netns", "exec", ns, *argv)

    def listening(self, ns: str, port: int) -> bool:
        """A TCP socket listens on ``port`` in ``ns`` (/proc/net/tcp is per namespace)."""
        table = self.exec_check(ns, "cat", "/proc/net/tcp")
        return any(f":{port:04X} " in line and line.split()[3] == "0A" for line in table.splitlines()[1:])

    def wait_listening(self, ns: str, port: int, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.listening(ns, port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} in {ns} after {timeout_s:.0f} s")
            time.sleep(0.05)

    def if_bytes(self) -> tuple[int, int]:
        """(sent, received) bytes on the kiosk's interface: what crossed its link."""
        out = self.exec_check(self.kiosk, "cat", f"/sys/class/net/{self.kiosk_if}/statistics/tx_bytes",
                              f"/sys/class/net/{self.kiosk_if}/statistics/rx_bytes")
        tx, rx = out.split()
        return int(tx), int(rx)

    # --- tear-down --------------------------------------------------------------------------

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def close(self) -> None:
        """Everything gone, even after a failure half-way through building."""
        for proc in reversed(self._procs):
            self.stop(proc, 5.0)
            if proc.stdout is not None:
                proc.stdout.close()
        for ns in (self.kiosk, self.relay, self.central):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)

    def namespaces_left(self) -> list[str]:
        names = ip("netns", "list")
        return [ns for ns in (self.kiosk, self.relay, self.central) if re.search(rf"^{ns}\b", names, re.M)]
