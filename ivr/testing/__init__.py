"""Test helpers shipped with the package: a test phone (real Asterisk via AMI) and a fake
Asterisk client for fast protocol tests."""

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
SPAN = 12_000  # ports tried below the ephemeral range


_GIVEN: set[int] = set()  # ports free_port() returned in this process


def free_port() -> int:
    """A port on 127.0.0.1 that nothing uses right now, for TCP and UDP alike, chosen
    below the kernel's ephemeral range, and never one this process was given before
    (ports handed out are often bound only later: two asks in a row must not get the
    same one). A port bound to 0 comes from the ephemeral range, where any outgoing
    connection may take it as its local end: a test's Asterisk restarted after
    ``kill -9`` then found its AMI port "taken by another process"."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first = max(1024, low - SPAN)
    pick = random.SystemRandom()
    for _ in range(500):
        port = pick.randrange(first, low)
        if port in _GIVEN:
            continue
        try:
            with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 between {first} and {low}")


async def wait_listening(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` within ``timeout``
    seconds (a server process a test started)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return True
    return False
