"""Egress policy: which hosts HTTP tools may reach, and which addresses they may never reach.

Deny by default. A request goes out only when its host is on the allowlist *and* every address
the host resolves to is acceptable: loopback, link-local (cloud metadata lives at 169.254.169.254),
private, shared (100.64/10), unspecified, multicast and reserved addresses are refused, also when
written as IPv4-mapped, 6to4, Teredo or NAT64 IPv6, unless an operator allowed their CIDR.

The check alone would leave a gap: a name checked now may resolve elsewhere a moment later (DNS
rebinding). :class:`PinnedHTTPTransport` closes it by resolving and checking inside the connection
setup and connecting to the very address it checked, so no second, unchecked lookup ever happens.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from interlock.exceptions import ConfigError, UpstreamError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: internal to someone
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class HostRule:
    """One allowlist entry. ``port`` None means the scheme's default port; ``any_port`` any port."""

    host: str  # lower-case ASCII (IDNA); a leading "*." matches any subdomain, never the apex
    port: int | None = None
    any_port: bool = False

    def matches(self, host: str, port: int, default_port: int) -> bool:
        if self.host.startswith("*."):
            if not host.endswith(self.host[1:]):
                return False
        elif host != self.host:
            return False
        if self.any_port:
            return True
        return port == (self.port if self.port is not None else default_port)

    @classmethod
    def parse(cls, entry: str) -> HostRule:
        """``api.example.com``, ``*.example.com``, ``api.example.com:8443``, ``host:*``, ``[::1]:8080``."""
        text = entry.strip().lower()
        host, port_text = text, ""
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ConfigError(f"egress.allow_hosts: {entry!r}: unbalanced brackets")
            port_text = rest[1:]
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        host = host.rstrip(".")
        if not host or "/" in host or "@" in host or (host.count("*") and not host.startswith("*.")):
            raise ConfigError(f"egress.allow_hosts: {entry!r} is not a host name, *.domain or IP address")
        if host.count("*") > 1 or host == "*.":
            raise ConfigError(f"egress.allow_hosts: {entry!r}: only one leading '*.' wildcard is allowed")
        if ":" not in host:
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise ConfigError(f"egress.allow_hosts: {entry!r} is not a valid host name") from exc
        else:
            try:
                host = str(ipaddress.IPv6Address(host))
            except ValueError as exc:
                raise ConfigError(f"egress.allow_hosts: {entry!r} is not a valid IPv6 address") from exc
        if port_text == "*":
            return cls(host, any_port=True)
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigError(f"egress.allow_hosts: {entry!r}: bad port {port_text!r}")
            return cls(host, port=int(port_text))
        return cls(host)


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is no place for a tool call to go, or None for a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4-mapped address *is* its IPv4 address to the socket layer; the tunnelling forms
        # (6to4, Teredo, NAT64) reach the IPv4 address inside, so a bad one inside condemns them.
        if ip.ipv4_mapped is not None:
            return address_problem(ip.ipv4_mapped)
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        inner = address_problem(embedded) if embedded is not None else None
        if inner is not None:
            return f"{inner} (embedded in {ip})"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("shared address space (100.64.0.0/10)", isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    )
    for name, hit in checks:
        if hit:
            return name
    # is_global also rules out documentation, benchmarking and other special-purpose blocks.
    return None if ip.is_global else "not globally routable"


def _denied(message: str, *, host: str) -> UpstreamError:
    return UpstreamError(f"egress denied: {message}", code="egress_denied", details={"host": host})


class EgressPolicy:
    """Where HTTP tools may connect. Immutable and thread-safe; build one per server."""

    def __init__(self, *, hosts: Iterable[HostRule] = (), cidrs: Iterable[IPNetwork] = ()) -> None:
        self.hosts = tuple(hosts)
        self.cidrs = tuple(cidrs)

    @classmethod
    def from_config(cls, allow_hosts: Sequence[str], allow_cidrs: Sequence[str] = ()) -> EgressPolicy:
        """Build from plain strings; a bad entry is a :class:`ConfigError` naming it."""
        cidrs: list[IPNetwork] = []
        for entry in allow_cidrs:
            try:
                cidrs.append(ipaddress.ip_network(entry.strip(), strict=True))
            except ValueError as exc:
                raise ConfigError(f"egress.allow_cidrs: {entry!r}: {exc}") from exc
        return cls(hosts=[HostRule.parse(h) for h in allow_hosts], cidrs=cidrs)

    # ---- the checks --------------------------------------------------------------------------

    def check_url(self, url: httpx.URL) -> list[str]:
        """Check scheme, host and every resolved address; return the checked addresses."""
        scheme = url.scheme
        raw_host = url.raw_host.decode("ascii")  # IDNA-encoded, as the allowlist is
        if scheme not in _DEFAULT_PORTS:
            raise _denied(f"scheme {scheme!r} is not allowed (http and https only)", host=raw_host)
        port = url.port or _DEFAULT_PORTS[scheme]
        host = self.check_host(raw_host, port, default_port=_DEFAULT_PORTS[scheme])
        return self.resolve(host, port)

    def check_host(self, host: str, port: int, *, default_port: int) -> str:
        """The normalised host when it is on the allowlist; raises ``egress_denied`` otherwise."""
        name = _normalise(host)
        if not any(rule.matches(name, port, default_port) for rule in self.hosts):
            raise _denied(f"host {name}:{port} is not on the egress allowlist", host=name)
        return name

    def check_address(self, ip: IPAddress, *, host: str) -> None:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # the socket layer connects to the IPv4 address; so judge that
        if any(ip in net for net in self.cidrs if net.version == ip.version):
            return
        problem = address_problem(ip)
        if problem is not None:
            raise _denied(f"{host} resolves to {ip}, a {problem} address", host=host)

    def resolve(self, host: str, port: int) -> list[str]:
        """Every address ``host`` resolves to, each one checked; any bad one refuses them all.

        Refusing all (rather than filtering) keeps a name that is half internal from being used:
        such a name is a misconfiguration or an attack, not something to route around.
        """
        literal = _ip_literal(host)
        if literal is not None:
            self.check_address(literal, host=host)
            return [str(literal)]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise UpstreamError(
                f"cannot resolve {host}: {exc}", code="upstream_unreachable", details={"host": host}
            ) from exc
        addresses: list[str] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone id
            ip = ipaddress.ip_address(text)
            self.check_address(ip, host=host)
            if text not in addresses:
                addresses.append(text)
        if not addresses:
            raise _denied(f"{host} resolves to no address", host=host)
        return addresses


def _normalise(host: str) -> str:
    literal = _ip_literal(host)
    return str(literal) if literal is not None else host.lower().rstrip(".")


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# ---- connection pinning ----------------------------------------------------------------------


class _PinnedBackend(httpcore.NetworkBackend):
    """Resolves, checks and connects in one step, to the addresses it checked.

    httpcore asks for a connection by host name; TLS is then started on the returned stream with
    that same name as SNI and for certificate verification, so pinning the IP costs no TLS
    correctness. Connections are pooled per origin (scheme, host, port): a reused connection goes
    to an address that passed the check when it was opened.
    """

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self._policy.resolve(host, port):
            try:
                # An IP literal: create_connection does no DNS lookup of its own.
                return self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise _denied("unix sockets are not reachable by tools", host=path)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# httpcore's errors as the httpx errors callers expect; subclasses before their bases.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _translate(exc: Exception, request: httpx.Request | None) -> Exception:
    for core, mapped in _ERRORS:
        if isinstance(exc, core):
            return mapped(str(exc), request=request)
    return exc


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as exc:
            raise _translate(exc, None) from exc

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class PinnedHTTPTransport(httpx.BaseTransport):
    """An httpx transport that only opens connections :class:`EgressPolicy` accepts.

    No proxy support by design: a proxy would make the proxy's address the one checked.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(
            max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0
        )
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(policy),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = self._pool.handle_request(core_request)
        except Exception as exc:
            translated = _translate(exc, request)
            if translated is exc:
                raise
            raise translated from exc
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


__all__ = ["EgressPolicy", "HostRule", "PinnedHTTPTransport", "address_problem"]
