"""The client's address, seen through trusted reverse proxies (``X-Forwarded-For``).

Behind a load balancer every request comes from the balancer's address: rate limits,
the failed-login guard and the access log would see one client. When the peer is a
trusted proxy (``WALLABY_TRUSTED_PROXIES``), the client is the last address in
``X-Forwarded-For`` that is not itself a trusted proxy: each proxy appends the address
it got the request from, so everything left of the first untrusted hop may be forged by
the client and is ignored. From any other peer the header is ignored entirely.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

__all__ = ["ClientAddress", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: Sequence[str]) -> tuple[Network, ...]:
    """Addresses or CIDR ranges (``10.0.0.0/8``, ``::1``).

    Raises:
        ValueError: An entry is not an address or a range.
    """
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in spec if entry)


class ClientAddress:
    """Finds a request's client address.

    Args:
        trusted: Addresses or ranges of the reverse proxies in front of the gateway.
    """

    def __init__(self, trusted: Sequence[str] = ()) -> None:
        self.networks = parse_networks(trusted)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def of(self, request: Any) -> str:
        """The client address of ``request`` (its peer's, unless that is a trusted proxy)."""
        peer = str(getattr(request.getClientAddress(), "host", None) or "unknown")
        if not self.networks or not self._trusted(peer):
            return peer
        hops: list[str] = [
            hop.strip()
            for value in request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
            for hop in value.decode("latin-1").split(",")
        ]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a garbled chain: trust nothing in it
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer
