"""Who may talk to the server: the `Host` header, the browser's `Origin`, the API key (pure; the app enforces them).

A server on 127.0.0.1 without an API key is reachable from every web page the user opens. Two
attacks follow, and the rules here close them the way Ollama's `allowedHosts`/`OLLAMA_ORIGINS`
and Jupyter's host and origin checks do:

- **DNS rebinding**: a page at `http://evil.example:8000` re-points its own name at 127.0.0.1
  and then reads every answer, since to the browser it is the same site. Its requests carry
  `Host: evil.example:8000`. So a request's Host must name this machine: an IP address
  (a page cannot rebind an address), `localhost` or a `*.localhost` name, this machine's host
  name (and its `.local` form), the name the server was bound to, or an entry of
  `allowed_hosts` (`example.lan`, `.example.lan` for every name under it, `*` for any).
- **Cross-site requests**: any page can POST a `text/plain` body without a preflight; it cannot
  read the answer, but it spends the user's CPU or changes the store. Browsers mark such requests
  with `Origin`, so a request whose Origin is not a page of this machine (`http(s)://localhost`,
  `127.0.0.1`, `[::1]`, any port), a desktop app's scheme (`app://`, `file://`, `tauri://`,
  `vscode-webview://`, as Ollama allows), or an entry of `allowed_origins` (exact, or with `*`
  wildcards: `https://*.example.com`, `*` for any) is refused. Clients outside a browser (curl,
  the SDKs) send no Origin and are not affected.

Both refusals are 403s in the route's error shape; allowed browser origins get CORS headers.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import socket
from functools import lru_cache
from urllib.parse import urlsplit

LOCAL_NAMES = {"localhost"}
LOOPBACK_ORIGIN_HOSTS = {"localhost", "127.0.0.1", "::1"}
APP_SCHEMES = {"app", "file", "tauri", "vscode-webview", "vscode-file"}  # desktop apps' pages (as Ollama)


def split_host(header: str) -> str | None:
    """The host name or address of a Host header (`name:port`, `[v6]:port`), lower case; None if malformed."""
    try:
        host = urlsplit(f"//{header.strip()}").hostname
        urlsplit(f"//{header.strip()}").port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return host.rstrip(".").lower() if host else None


@lru_cache(maxsize=1)
def machine_names() -> frozenset[str]:
    """This machine's own host names (as a LAN peer or the machine itself would type them)."""
    names = set()
    try:
        hostname = socket.gethostname().lower()
    except OSError:
        return frozenset()
    if hostname:
        short = hostname.split(".")[0]
        names |= {hostname, short, f"{short}.local"}
    return frozenset(names)


def _matches(name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith(("*.", ".")) and name.endswith("." + pattern.lstrip("*.")):
            return True
    return False


def host_allowed(header: str | None, bound_host: str, allowed_hosts: list[str]) -> bool:
    """Whether a request's Host header names this machine (no header at all: HTTP/1.0 clients)."""
    if header is None or not header.strip():
        return True
    host = split_host(header)
    if host is None:
        return False
    try:
        ipaddress.ip_address(host)
        return True  # an address cannot be rebound: whoever typed it meant this machine
    except ValueError:
        pass
    if host in LOCAL_NAMES or host.endswith(".localhost") or host in machine_names():
        return True
    if host == bound_host.strip("[]").lower():
        return True
    return _matches(host, allowed_hosts)


def origin_allowed(origin: str | None, allowed_origins: list[str]) -> bool:
    """Whether a browser page from `origin` may use the API (None: not a browser, always allowed)."""
    if origin is None:
        return True
    origin = origin.strip()
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if parts.scheme in ("http", "https") and hostname is not None:
        if hostname in LOOPBACK_ORIGIN_HOSTS or hostname.endswith(".localhost"):
            return True
        try:
            if ipaddress.ip_address(hostname).is_loopback:
                return True
        except ValueError:
            pass
    if parts.scheme in APP_SCHEMES:
        return True
    return any(pattern == "*" or fnmatch.fnmatchcase(origin.lower(), pattern.lower()) for pattern in allowed_origins)


def key_accepted(authorization: str | None, api_key: str | None) -> bool:
    """Whether an `Authorization` header carries the API key (always, when the server has none)."""
    if not api_key:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
