"""What a cellular link does to packets, made by the kernel on a Topology (tests/support/netns.py).

- bandwidth: a ``tbf`` qdisc on each direction's egress (the kiosk's interface for the
  uplink, the relay's kiosk-facing interface for the downlink), with a queue of at most
  ``queue_ms`` of traffic, as a cell's buffer;
- latency: the relay's TUN process (set when the Topology is made);
- random loss per direction: nftables ``numgen random`` in the kiosk namespace, output
  hook for the uplink, input hook for the downlink (so loss on one side only is possible);
- a black hole: nftables drops everything both ways (or only what comes down to the
  kiosk: captures arrive, receipts and acknowledgements do not); no RST, no ICMP, nothing;
- a NAT that forgets idle connections: conntrack in the kiosk namespace with an
  established-TCP timeout of ``idle_s``, strict TCP tracking, and a rule that drops what
  conntrack no longer knows (``ct state invalid``): after ``idle_s`` without a packet the
  connection's packets vanish both ways, silently, while a new connection (a SYN) works;
- flaps: the relay's kiosk-facing interface taken down and up on a timer (the kiosk's
  interface loses carrier: its packets go nowhere, its connects fail).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass

from tests.support.netns import Topology, sh

TABLE = "kiosklink"


@dataclass(frozen=True)
class Shape:
    up_kbit: int
    down_kbit: int
    queue_ms: int = 500


def shape(topo: Topology, s: Shape) -> None:
    for ns, dev, kbit in ((topo.kiosk, topo.kiosk_if, s.up_kbit),
                          (topo.relay, topo.relay_kiosk_if, s.down_kbit)):
        # burst: a few full-size packets (tbf needs at least one MTU, and rate/HZ per tick).
        burst = max(4500, kbit * 1000 // 8 // 100)
        sh("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{kbit}kbit",
           "burst", str(burst), "latency", f"{s.queue_ms}ms")


def _nft(topo: Topology, script: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", topo.kiosk, "nft", "-f", "-"], input=script,
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"nft failed: {done.stderr.strip()}\n{script}")


def set_loss(topo: Topology, up_pct: float, down_pct: float, *, nat_idle_s: float | None = None) -> None:
    """Random loss per direction in per-mille steps; optionally the NAT idle timeout."""
    rules = {"output": [f'oifname "{topo.kiosk_if}"'], "input": [f'iifname "{topo.kiosk_if}"']}
    chains = []
    for hook, pct in (("output", up_pct), ("input", down_pct)):
        body = []
        if nat_idle_s is not None:
            body.append(f"{rules[hook][0]} ct state invalid counter drop")
        if pct > 0:
            body.append(f"{rules[hook][0]} numgen random mod 1000 < {round(pct * 10)} counter drop")
        body.append(f"{rules[hook][0]} counter")
        chains.append(f"  chain {hook} {{\n    type filter hook {hook} priority 0; policy accept;\n    "
                      + "\n    ".join(body) + "\n  }")
    if nat_idle_s is not None:
        # Strict tracking: a mid-stream packet of a forgotten connection is "invalid", not a
        # new connection picked up half-way (loose mode); liberal windows so loss and
        # retransmissions are never judged out of window.
        topo.exec_check(topo.kiosk, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0",
                        "net.netfilter.nf_conntrack_tcp_be_liberal=1",
                        f"net.netfilter.nf_conntrack_tcp_timeout_established={int(nat_idle_s)}")
    # Declared, deleted and made again in one transaction: replaces any earlier rules.
    _nft(topo, f"table inet {TABLE}\ndelete table inet {TABLE}\n"
               f"table inet {TABLE} {{\n" + "\n".join(chains) + "\n}\n")
    if nat_idle_s is not None:
        # The sysctls need conntrack loaded, which the ruleset above just did: set them again.
        topo.exec_check(topo.kiosk, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0",
                        "net.netfilter.nf_conntrack_tcp_be_liberal=1",
                        f"net.netfilter.nf_conntrack_tcp_timeout_established={int(nat_idle_s)}")


def packets(topo: Topology) -> dict[str, int]:
    """IP packets on the kiosk's link so far: "output"/"input" passed, and "output dropped"/
    "input dropped" by the loss and NAT rules (ARP and the like are not counted)."""
    out = topo.exec_check(topo.kiosk, "nft", "list", "table", "inet", TABLE)
    counts = {"output": 0, "input": 0, "output dropped": 0, "input dropped": 0}
    hook = ""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("chain "):
            hook = line.split()[1]
        elif "packets " in line:
            key = f"{hook} dropped" if line.endswith(" drop") else hook
            counts[key] += int(line.split("packets ")[1].split()[0])
    return counts


def black_hole(topo: Topology, on: bool, *, down_only: bool = False) -> None:
    """Every packet to (and unless ``down_only``, from) the kiosk dropped without a trace
    (its own table, so loss rules stay as they are)."""
    if on:
        dev = topo.kiosk_if
        up = f'  chain output {{ type filter hook output priority -10; oifname "{dev}" drop; }}\n'
        _nft(topo, f"table inet {TABLE}-hole {{\n" + ("" if down_only else up)
                   + f'  chain input {{ type filter hook input priority -10; iifname "{dev}" drop; }}\n'
                   "}\n")
    else:
        _nft(topo, f"table inet {TABLE}-hole\ndelete table inet {TABLE}-hole\n")


def refuse(topo: Topology, on: bool) -> None:
    """Connections from the kiosk refused at once (a TCP reset, as from a host whose service
    is down): the agent queues its backlog while the central side gets ready."""
    if on:
        _nft(topo, f"table inet {TABLE}-refuse {{\n"
                   f'  chain output {{ type filter hook output priority -20; oifname "{topo.kiosk_if}" '
                   "meta l4proto tcp reject with tcp reset; }\n}\n")
    else:
        _nft(topo, f"table inet {TABLE}-refuse\ndelete table inet {TABLE}-refuse\n")


def link(topo: Topology, up: bool) -> None:
    sh("ip", "-n", topo.relay, "link", "set", topo.relay_kiosk_if, "up" if up else "down")


class Flapper:
    """The link up ``up_s``, down ``down_s``, again and again, until stopped (then up)."""

    def __init__(self, topo: Topology, up_s: float, down_s: float) -> None:
        self.topo, self.up_s, self.down_s = topo, up_s, down_s
        self.downs: list[float] = []  # wall-clock moments the link went down
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-flapper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.up_s):
            link(self.topo, False)
            self.downs.append(time.time())
            self._stop.wait(self.down_s)
            link(self.topo, True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        link(self.topo, True)
