"""Where the crawler may connect: public addresses only, decided on the resolved address.

A page on a public host can redirect (or link) to `localhost`, a private
network or a cloud metadata address (169.254.169.254). The crawler's
connections go through `GuardedBackend`, which resolves the host itself,
refuses the connection if any of its addresses is loopback, private,
link-local, multicast, reserved or unspecified (unless the user allowed
private addresses, for a local test server), and then connects to the
address it checked, so a second DNS answer cannot swap in another one.
TLS still verifies the certificate against the host name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

import httpcore

Resolver = Callable[[str, int], list[str]]
Policy = Callable[[str], str | None]  # address -> why it is refused, or None
REFUSED = "address refused"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why a connection to `address` is refused, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified:
        return f"{address} is a multicast or unspecified address"
    if not allow_private and not ip.is_global:
        what = ("loopback" if ip.is_loopback else "link-local" if ip.is_link_local
                else "private" if ip.is_private else "non-public")
        return f"{address} is a {what} address (--allow-private permits it)"
    return None


class BlockedAddress(httpcore.ConnectError):
    """A connection the policy refused; nothing was sent."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend, connecting only to resolved addresses the policy allows."""

    def __init__(self, policy: Policy, resolver: Resolver = system_resolver,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy, self.resolver = policy, resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await asyncio.get_running_loop().run_in_executor(None, self.resolver, host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}")
        for address in addresses:
            if problem := self.policy(address):
                raise BlockedAddress(f"{REFUSED}: {host} resolves to {problem}")
        return await self._inner.connect_tcp(addresses[0], port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress(f"{REFUSED}: unix sockets are not crawled")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
