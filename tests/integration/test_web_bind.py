"""The worker's web server listens on ``web.host`` only (127.0.0.1 by default), not on
every interface: /metrics, /health and the webhooks are not for the network."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from tests.integration.harness import Deployment


def local_addresses() -> list[str]:
    """This machine's own IPv4 addresses outside 127.0.0.0/8 (from the kernel's table)."""
    found: list[str] = []
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        return found
    for previous, line in zip(lines, lines[1:], strict=False):
        if line.strip().startswith("/32 host LOCAL"):
            address = previous.strip().removeprefix("|-- ")
            if not ipaddress.ip_address(address).is_loopback and address not in found:
                found.append(address)
    return found


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the IPv4 and IPv6 sockets listening on ``port``."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel writes each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(words[:4] if width == 8 else words)))
    return found


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


async def test_the_web_port_listens_on_web_host_alone(deployment: Deployment) -> None:
    w = deployment.worker("a").start()
    await deployment.wait_ready([w])
    assert reachable("127.0.0.1", w.web_port)
    assert listening_addresses(w.web_port) == {"127.0.0.1"}
    for address in local_addresses():
        assert not reachable(address, w.web_port), f"the web port answers on {address}"
