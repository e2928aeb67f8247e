"""Who may talk to the server: the names allowed in `Host` and the web pages (`Origin`)
allowed to send requests.

Two attacks on a server on `localhost`, and the check that stops each:

- **DNS rebinding**: a page on `evil.example` makes its own name resolve to 127.0.0.1, so
  the browser lets it read this server's answers as if they were its own. Its requests
  carry `Host: evil.example`; only the names this server is known by are accepted.
- **Cross-site requests (CSRF)**: any page the user visits can POST a form to
  `http://localhost:8000/predict`. The browser names that page in `Origin`; only loopback
  pages (this computer's), the server's own origin and origins named with
  `--allow-origin` are accepted. Requests without `Origin` (curl, scripts, and the
  browser's own same-origin GETs) pass: no other web page can send one without it.

An IP address in `Host` cannot be a rebinding (the attack needs a name the attacker's DNS
answers), so a server listening on the network (`--host 0.0.0.0`) answers requests by
address; a name for this computer (`lab-pc.local`) must be allowed with `--allow-host`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names a loopback server answers to by default."""

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]
"""(scheme, lower-cased host, port) of a web origin."""


def split_host(value: str) -> tuple[str, int | None]:
    """A `Host` header as (lower-cased name, port or None): `localhost:8000`, `[::1]:8000`,
    `example.org`. Raises `ValueError` when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(value)
        port = rest[1:]
    else:
        name, _, port = value.partition(":")
    if not name or (port and not port.isdigit()) or any(c in name for c in "/@?#[] "):
        raise ValueError(value)
    return name, int(port) if port else None


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(name: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_origin(value: str) -> Origin:
    """`scheme://host[:port]` (what browsers send in `Origin`; a trailing `/` is allowed)
    as an `Origin`. Raises `ValueError` for anything else, `null` included."""
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(value)
    port = parts.port  # raises ValueError for a port that is not a number
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _show(origin: Origin) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if _DEFAULT_PORTS[scheme] == port else f":{port}")


@dataclass(frozen=True)
class Access:
    """The allowed `Host` names and `Origin`s of one server (see the module docs).

    `hosts`: lower-cased names without port. `origins`: the origins named by the operator,
    which also get CORS headers so their pages can read the answers. `ip_hosts`: any IP
    address is accepted in `Host` (the server listens on the network)."""

    hosts: frozenset[str] = LOOPBACK_NAMES
    origins: frozenset[Origin] = field(default_factory=frozenset)
    ip_hosts: bool = False

    @classmethod
    def for_server(cls, bound_host: str = "127.0.0.1", allow_hosts: Iterable[str] = (),
                   allow_origins: Iterable[str] = ()) -> "Access":
        """The access of a server listening on `bound_host`: loopback names, the bound
        host itself (unless a wildcard such as 0.0.0.0), `allow_hosts`, and the host of
        each of `allow_origins`. Raises `ValueError` naming a malformed host or origin."""
        hosts = set(LOOPBACK_NAMES)
        bound = bound_host.strip().lower().strip("[]")
        if bound not in _WILDCARDS:
            hosts.add(bound)
        for name in allow_hosts:
            try:
                hosts.add(split_host(name)[0])
            except ValueError:
                raise ValueError(f"--allow-host {name!r}: not a host name or address") from None
        origins = set()
        for value in allow_origins:
            try:
                origins.add(parse_origin(value))
            except ValueError:
                raise ValueError(f"--allow-origin {value!r}: not an origin like http://lab-pc.local:8000") from None
        hosts |= {host for _, host, _ in origins}
        return cls(frozenset(hosts), frozenset(origins), ip_hosts=not is_loopback(bound))

    def host_refusal(self, host: str | None) -> str | None:
        """Why a request with this `Host` header is refused, or None when it is allowed."""
        if not host:
            return "no Host header: refused"
        try:
            name, _ = split_host(host)
        except ValueError:
            return f"malformed Host header {host[:100]!r}: refused"
        if name in self.hosts or is_loopback(name) and is_ip(name) or (self.ip_hosts and is_ip(name)):
            return None
        return (f"Host {name!r} is not a name of this server (a DNS-rebinding page?): refused; start "
                f"treeclip serve with --allow-host {name} if clients reach it by that name")

    def origin_refusal(self, origin: str | None, host: str) -> str | None:
        """Why a request from the page `origin` is refused (None: allowed), for a request
        whose `Host` passed `host_refusal`."""
        if origin is None:
            return None
        try:
            parsed = parse_origin(origin)
        except ValueError:
            return f"requests from the web page origin {origin[:100]!r} are refused"
        if parsed in self.origins or is_loopback(parsed[1]) or self._same_origin(parsed, host):
            return None
        return (f"requests from the web page {_show(parsed)} are refused (a cross-site request?); start "
                f"treeclip serve with --allow-origin {_show(parsed)} to allow that page")

    def cors(self, origin: str | None) -> bool:
        """Whether answers to `origin` get CORS headers (an origin the operator named)."""
        try:
            return origin is not None and parse_origin(origin) in self.origins
        except ValueError:
            return False

    @staticmethod
    def _same_origin(origin: Origin, host: str) -> bool:
        # a page this server served, under the (already allowed) name in Host
        name, port = split_host(host)
        return origin == ("http", name, port if port is not None else 80)

    def warning(self) -> str | None:
        """One line for the operator of a server on the network, or None on loopback."""
        if not self.ip_hosts:
            return None
        return ("treeclip: listening on the network: clients that reach this computer by its address are "
                "answered; by a name, only with --allow-host NAME; web pages of other origins only with "
                "--allow-origin ORIGIN")
