"""A TCP address as the flags write it: a listener's, the admin listener's, a worker's."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str) -> HostPort:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``; port 0 asks the kernel for a free one."""
    host, sep, port_text = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if ":" in host and not bracketed:
        # Unbracketed, "::1" would split into host ":" and port 1.
        raise ValueError(f"expected HOST:PORT or [IPV6]:PORT, got {text!r}")
    # isdigit() alone admits "²", which int() rejects, and "٣", which int() reads as 3.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return HostPort(host, int(port_text))
