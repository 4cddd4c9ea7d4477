"""Asking a running server from the command line (`ortserve ps`, `ortserve info`).

The default server is the one `ortserve serve` would start with the same settings
(configs/server.toml, ORTSERVE_*), so a port set there is found without `--url`.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TypeGuard

from ortserve.core.store import StoreError

# what `serve` listens on for every interface; asked on this machine's loopback
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def served() -> tuple[str, str | None]:
    """The URL and API key of the server that `serve` starts with these settings."""
    from ortserve.server.settings import ServerSettings

    settings = ServerSettings.load()
    host = _ANY.get(settings.host, settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}", settings.api_key


def server_url(text: str) -> str:
    """--url: http(s)://HOST[:PORT], or HOST:PORT (http:// is added); refused here rather than at the request."""
    url = text.strip() if "://" in text else f"http://{text.strip()}"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number or out of range raises here
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL ({exc}); use http://HOST:PORT") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a server URL; use http://HOST:PORT")
    return url


def opener(url: str) -> urllib.request.OpenerDirector:
    """A server on this machine is never reached through $HTTP_PROXY (as Go's clients, ollama's, do)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    local = host == "localhost" or host == "::1" or host.startswith("127.")
    return urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))


def loaded_models(base: str, api_key: str | None) -> list[dict[str, Any]]:
    """GET /api/ps: the models the server at `base` has loaded; StoreError says why not."""
    url = base.rstrip("/") + "/api/ps"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with opener(url).open(urllib.request.Request(url, headers=headers), timeout=30) as response:
            models = json.load(response)["models"]
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        hint = " (is it an ortserve server?)" if exc.code == 404 else ""
        raise StoreError(f"{url}: {exc.code} {message}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise StoreError(f"no server answers at {base}: {getattr(exc, 'reason', exc)}") from None
    except (ValueError, KeyError, TypeError):
        models = None
    if not _is_ps_answer(models):  # another kind of server (Ollama's /api/ps has no expires_in)
        raise StoreError(f"{url} did not answer as ortserve does (a JSON object with 'models')")
    return models


def _is_ps_answer(models: object) -> TypeGuard[list[dict[str, Any]]]:
    """Whether /api/ps answered ortserve's shape: models with a name, a size and expires_in (None: forever)."""
    return isinstance(models, list) and all(
        isinstance(m, dict)
        and isinstance(m.get("name"), str)
        and "expires_in" in m
        and isinstance(m["expires_in"], (int, float, type(None)))
        and isinstance(m.get("size", 0), (int, float))
        for m in models
    )
