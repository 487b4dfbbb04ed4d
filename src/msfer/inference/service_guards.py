"""Who may use the REST service, and how many at once: the ``Host`` and cross-origin rules and the security headers
(:class:`BrowserGuard`, an ASGI middleware), and the gate that bounds the requests decoding and inferring together
and the memory they hold (:class:`InferenceGate`). The rules themselves are told in :mod:`msfer.inference.service`.
"""
from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Every response's policy, the page's and /docs' alike: scripts, styles and requests from the service's own origin
# only (no inline script or style), framed by no one.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "content-security-policy": PAGE_CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class InferenceGate:
    """At most ``slots`` requests decode and infer at once and ``queue`` more wait; :meth:`enter` refuses the rest.

    ``memory_mb``: the budget of estimated memory the requests that decode and infer may hold together
    (:meth:`memory`; None: no budget). Thread-based (not asyncio), so it holds whatever event loop or thread
    a request runs in.
    """

    def __init__(self, slots: int, queue: int, memory_mb: float | None = None) -> None:
        if slots < 1 or queue < 0:
            raise ValueError(f"need at least 1 concurrent slot and a queue of 0 or more, got {slots} and {queue}")
        self.slots = threading.BoundedSemaphore(slots)
        self.capacity = slots + queue
        self.admitted = 0
        self.memory_mb = memory_mb
        self.reserved_mb = 0.0
        self._lock = threading.Lock()
        self._memory = threading.Condition()

    def enter(self) -> bool:
        """Take a place (running or waiting); False when all places are taken."""
        with self._lock:
            if self.admitted >= self.capacity:
                return False
            self.admitted += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1

    @contextlib.contextmanager
    def memory(self, mb: float) -> Iterator[None]:
        """Hold ``mb`` of the budget for the block, first waiting until it fits beside what others hold (a request
        alone always runs, whatever its estimate)."""
        with self._memory:
            self._memory.wait_for(lambda: self.memory_mb is None or self.reserved_mb <= 0
                                  or self.reserved_mb + mb <= self.memory_mb)
            self.reserved_mb += mb
        try:
            yield
        finally:
            with self._memory:
                self.reserved_mb -= mb
                self._memory.notify_all()


@dataclass
class UploadStats:
    """Request bodies being received now (``receiving``), and the uploads that did not arrive: ``timed_out``
    (408) and ``disconnected`` (the client went away mid-upload); apart from the requests being recognised."""

    receiving: int = 0
    timed_out: int = 0
    disconnected: int = 0


def _host_and_port(value: str) -> tuple[str, int | None] | None:
    """(lower-case name without a trailing dot or brackets, port or None) of a ``Host`` value; None if malformed."""
    try:
        parts = urlsplit("//" + value.strip())
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name:
        return None
    return name.rstrip("."), port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AllowedHosts:
    """The ``Host`` names the service answers under.

    Always: IP addresses, names without a dot (``localhost``, a machine's short name), ``*.localhost`` and
    this machine's host name. A DNS-rebinding page can only reach the service under a name of its own domain,
    which is none of these. ``extra``: more names; ``.example.org`` for that domain and its subdomains, ``*``
    for any name (no check).
    """

    def __init__(self, extra: Sequence[str] = ()) -> None:
        extra = [name.strip().lower().rstrip(".") for name in extra if name.strip()]
        self.any = "*" in extra
        self.names = {name for name in extra if not name.startswith(".")} | {socket.gethostname().lower()}
        self.domains = tuple(name for name in extra if name.startswith("."))
        self.extra = extra

    def allows(self, host: str) -> bool:
        parsed = _host_and_port(host)
        if parsed is None:
            return False
        name = parsed[0]
        return (self.any or _is_ip(name) or "." not in name or name.endswith(".localhost") or name in self.names
                or any(name == domain[1:] or name.endswith(domain) for domain in self.domains))


def normal_origin(value: str) -> str:
    """An origin as browsers send it (lower-case scheme and host, no default port, no path), for CORS's exact match;
    ``value`` itself if it is none."""
    parsed = _origin(value)
    if parsed is None:
        return value
    scheme, name, port = parsed
    return f"{scheme}://{name}" + ("" if port == (443 if scheme == "https" else 80) else f":{port}")


def _origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an ``Origin`` value, the port filled in from the scheme; None if it is none."""
    try:
        parts = urlsplit(value.strip())
        scheme, name, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in ("http", "https") or not name:
        return None
    return scheme, name.rstrip("."), port or (443 if scheme == "https" else 80)


def same_origin(origin: str, host: str | None) -> bool:
    """Whether a browser's ``Origin`` names the host and port the request was sent to (its ``Host``; a ``Host``
    without a port is the origin's scheme's default, as behind a proxy that ends TLS)."""
    theirs = _origin(origin)
    ours = _host_and_port(host) if host else None
    if theirs is None or ours is None:
        return False
    scheme, name, port = theirs
    return name == ours[0] and port == (ours[1] or (443 if scheme == "https" else 80))


class BrowserGuard:
    """ASGI middleware: the ``Host`` and cross-origin rules, and the security headers on every response."""

    def __init__(self, app, hosts: AllowedHosts, origins: Sequence[str]) -> None:
        self.app, self.hosts = app, hosts
        self.any_origin = "*" in origins
        self.origins = {_origin(origin) for origin in origins if origin != "*"} - {None}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
                         if name.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = Headers(scope=scope)
        host, origin = headers.get("host"), headers.get("origin")
        if host is not None and not self.hosts.allows(host):
            refusal = JSONResponse({"detail": f"unknown host {host!r}: this service answers under its IP addresses, "
                                              "localhost and this machine's name; start it with --allowed-hosts "
                                              "NAME to be reached as another name"}, status_code=400)
            await refusal(scope, receive, send_hardened)
            return
        if scope["method"] in UNSAFE_METHODS and origin is not None and not self.origin_allowed(origin, host):
            refusal = JSONResponse({"detail": f"cross-origin request refused: a page of {origin} may not send "
                                              "requests to this service (msfer serve --allowed-origins ORIGIN "
                                              "allows one)"}, status_code=403)
            await refusal(scope, receive, send_hardened)
            return
        await self.app(scope, receive, send_hardened)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        return self.any_origin or same_origin(origin, host) or _origin(origin) in self.origins
