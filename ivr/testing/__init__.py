"""Test helpers shipped with the package: a test phone (real Asterisk via AMI) and a fake
Asterisk client for fast protocol tests."""

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
