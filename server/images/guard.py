"""Which addresses an image URL may reach (the SSRF guard).

A host is resolved once; if any of its addresses is not public (loopback, private,
link-local, unique-local, CGNAT, multicast, reserved, unspecified, documentation, the
cloud metadata services), the URL is refused, unless `image_fetch_allow` names the
host, or a network holding every such address. The fetcher then connects to exactly
the addresses checked here: nothing is resolved again between the check and the
connection, so DNS rebinding cannot slip a private address in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

from ortserve.server.errors import ImageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]  # (host, port) -> addresses, best first

# Named although the ranges above already hold them: they are the usual targets.
METADATA = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "fd00:ec2::254/128",  # AWS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.192/32",  # Oracle Cloud
    )
)
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # CGNAT, shared address space
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "64:ff9b:1::/48",  # local-use NAT64
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the last 32 bits are an IPv4 address


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address leads to: mapped (::ffff:a.b.c.d), 6to4, Teredo, NAT64."""
    found = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [v4 for v4 in found if v4 is not None]


def is_public(ip: IPAddress) -> bool:
    """Whether an address is on the public internet (and no metadata service)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        if not all(is_public(v4) for v4 in _embedded_ipv4(ip)):
            return False
    flags = (ip.is_private, ip.is_loopback, ip.is_link_local, ip.is_multicast, ip.is_reserved, ip.is_unspecified)
    if any(flags) or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    return not any(ip in net for net in (*_NOT_PUBLIC, *METADATA))


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses through the system's resolver (getaddrinfo, on a worker thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressPolicy:
    """`image_fetch_allow` (host names, addresses, CIDR networks) and the check of a host's addresses."""

    def __init__(self, allow: Iterable[str] = ()):
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            entry = entry.strip()
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=True))
            except ValueError:
                self.hosts.add(_host_key(entry))

    def allows(self, ip: IPAddress) -> bool:
        if is_public(ip):
            return True
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.networks)

    async def addresses(self, host: str, port: int, resolver: Resolver | None = None) -> list[str]:
        """The addresses to connect to for host:port, every one of them checked; ImageError if refused."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            resolved = [literal]
        else:
            try:
                resolved = [ipaddress.ip_address(a) for a in await (resolver or system_resolver)(host, port)]
            except (OSError, UnicodeError, ValueError):
                raise ImageError(f"the host '{host}' could not be resolved.", code="image_fetch_failed") from None
            if not resolved:
                raise ImageError(f"the host '{host}' could not be resolved.", code="image_fetch_failed")
        if literal is None and _host_key(host) in self.hosts:
            return [str(ip) for ip in resolved]
        if not all(self.allows(ip) for ip in resolved):
            raise ImageError(
                f"the URL's host '{host}' is not a public internet address (it is loopback, private, link-local, "
                "reserved or a cloud metadata service); the server's image_fetch_allow setting can allow it.",
                code="image_url_refused",
            )
        return [str(ip) for ip in resolved]


def _host_key(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()
