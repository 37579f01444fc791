"""A packet relay that gives a link its latency: it holds every IP packet for a fixed time.

The kernel here has no ``netem`` qdisc, so nothing in the network stack can delay packets.
This relay runs in the relay namespace (tests/support/netns.py), attached to a TUN device
that policy routing sends every forwarded packet through: the kernel hands each packet to
this process, which writes it back after the one-way delay of its direction, and the kernel
forwards it on. It works on whole IP packets, so the kiosk's TCP connection still runs end
to end to the broker: retransmissions, window and RTT estimates are the kernel's own, as
over a cellular link (a TCP relay would terminate the connection and hide all of that).

A constant delay per direction keeps packets in order, so a FIFO per direction suffices.
Loss and bandwidth are not done here: nftables and tbf do them in the kernel.

    python -m tests.support.tun_relay DEVICE DOWNLINK_PREFIX UP_MS DOWN_MS

DOWNLINK_PREFIX is the kiosk's network (for instance 10.77.1.0/24): packets to it travel
the downlink (central -> kiosk), the others the uplink.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import select
import signal
import struct
import sys
import time
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
# Packets held at most; past it the relay drops, as a router's buffer would (never reached
# at the profiles' rates, but a bound keeps a stuck writer from eating the memory).
MAX_HELD = 20_000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def is_downlink(packet: bytes, kiosk_net: ipaddress.IPv4Network) -> bool:
    # IPv4 destination address: bytes 16-19 of the header (the relay routes IPv4 only).
    return len(packet) >= 20 and ipaddress.IPv4Address(packet[16:20]) in kiosk_net


def relay(fd: int, kiosk_net: ipaddress.IPv4Network, up_s: float, down_s: float) -> None:
    held: dict[bool, deque[tuple[float, bytes]]] = {False: deque(), True: deque()}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        now = time.monotonic()
        for queue in held.values():
            while queue and queue[0][0] <= now:
                try:
                    os.write(fd, queue.popleft()[1])
                except BlockingIOError:
                    break  # the kernel's queue is full: the packet is dropped, as a router's
                except OSError:
                    pass  # the device went down (a link flap): the packet is lost
        due = [q[0][0] for q in held.values() if q]
        timeout = max(0.0, min(due) - time.monotonic()) if due else 0.5
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if not readable:
            continue
        while True:
            try:
                packet = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            down = is_downlink(packet, kiosk_net)
            if sum(len(q) for q in held.values()) < MAX_HELD:
                held[down].append((time.monotonic() + (down_s if down else up_s), packet))


def main(argv: list[str]) -> int:
    device, prefix, up_ms, down_ms = argv
    fd = open_tun(device)
    print("relay ready", flush=True)
    relay(fd, ipaddress.IPv4Network(prefix), float(up_ms) / 1000, float(down_ms) / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
