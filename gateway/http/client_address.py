"""The client's address, seen through trusted reverse proxies (``X-Forwarded-For``).

Behind a load balancer every request comes from the balancer's address: rate limits,
the failed-login guard and the access log would see one client. When the peer is a
trusted proxy (``WALLABY_TRUSTED_PROXIES``), the client is the last address in
``X-Forwarded-For`` that is not itself a trusted proxy: each proxy appends the address
it got the request from, so everything left of the first untrusted hop may be forged by
the client and is ignored. From any other peer the header is ignored entirely.

The rate limit and the failed-login lockout count per client *key*
(:meth:`ClientAddress.key`), not per address: an IPv6 host is given at least a /64 and
may use any address in it (RFC 4291 2.5.1; RFC 8981 temporary addresses change by
themselves), so an IPv6 client is its prefix (``WALLABY_IPV6_CLIENT_PREFIX``, /64 by
default); an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, a dual-stack socket's view
of an IPv4 client) is that IPv4 address. The access log keeps the whole address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from typing import Any

__all__ = ["ClientAddress", "parse_networks", "valid_ipv6_prefix"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: Sequence[str]) -> tuple[Network, ...]:
    """Addresses or CIDR ranges (``10.0.0.0/8``, ``::1``).

    An IPv4-mapped entry (``::ffff:10.0.0.0/104``) stands for its IPv4 range too: a
    dual-stack listener shows IPv4 peers so, an IPv4 one plainly.

    Raises:
        ValueError: An entry is not an address or a range.
    """
    networks: list[Network] = []
    for entry in spec:
        if not entry:
            continue
        network = ipaddress.ip_network(entry.strip(), strict=False)
        networks.append(network)
        mapped = (network.network_address.ipv4_mapped
                  if isinstance(network, ipaddress.IPv6Network) else None)
        if mapped is not None and network.prefixlen >= 96:
            networks.append(ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}"))
    return tuple(networks)


#: The IPv6 client prefixes accepted: shorter than /32 (an ISP's whole allocation) would
#: make every customer of a provider one client.
IPV6_PREFIXES = range(32, 129)


def valid_ipv6_prefix(prefix: int) -> int:
    """``prefix`` if it may key IPv6 clients (see :data:`IPV6_PREFIXES`).

    Raises:
        ValueError: Out of range.
    """
    if prefix not in IPV6_PREFIXES:
        raise ValueError(f"{prefix} is not an IPv6 prefix length from 32 to 128 "
                         "(64: one client per /64, as IPv6 hosts are given)")
    return prefix


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``address`` as an IP address, an IPv4-mapped IPv6 one as IPv4 (``None``: not one)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)
def _key_of(address: str, ipv6_prefix: int) -> str:
    """:meth:`ClientAddress.key`, remembered: parsing an address costs 5-20 µs a request.

    Bounded, so a flood of distinct addresses only pushes older ones out.
    """
    ip = _ip(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    mask = ((1 << ipv6_prefix) - 1) << (128 - ipv6_prefix)
    return f"{ipaddress.IPv6Address(int(ip) & mask)}/{ipv6_prefix}"


class ClientAddress:
    """Finds a request's client address, and the key the limits count it by.

    Args:
        trusted: Addresses or ranges of the reverse proxies in front of the gateway.
        ipv6_prefix: Leading bits of an IPv6 address that name one client.

    Raises:
        ValueError: A trusted entry is not an address or range, or ``ipv6_prefix`` is
            out of range.
    """

    def __init__(self, trusted: Sequence[str] = (), ipv6_prefix: int = 64) -> None:
        self.networks = parse_networks(trusted)
        self.ipv6_prefix = valid_ipv6_prefix(ipv6_prefix)

    def _trusted(self, address: str) -> bool:
        """Whether ``address`` is a trusted proxy's, as written or in its IPv4 form.

        An IPv4 peer of a dual-stack listener shows as ``::ffff:a.b.c.d`` (as in the
        access log), and an operator may list it either way.
        """
        try:
            written = ipaddress.ip_address(address)
        except ValueError:
            return False
        forms = {written, _ip(address)}
        return any(ip in network for ip in forms for network in self.networks
                   if ip is not None and ip.version == network.version)

    def key(self, address: str) -> str:
        """The client an address counts as for the rate limit and the failed-login guard.

        Args:
            address: A client address (from :meth:`of`).

        Returns:
            An IPv4 address as it is (IPv4-mapped IPv6 ones as IPv4), an IPv6 one as its
            ``ipv6_prefix`` network (``2001:db8:1:2::/64``); anything else unchanged.
        """
        return _key_of(address, self.ipv6_prefix)

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
