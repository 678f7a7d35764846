"""Teacher URLs, parsed and normalised, and the allowlist rule the service checks them with.

A URL is compared by its parts, never as a string prefix: scheme, host and port must equal an
allowlist entry's, and the path (percent-escapes decoded, dot segments resolved) must lie under the
entry's path at a `/` boundary. Credentials, fragments, control characters and encoded slashes are
refused outright: each is a way to make one string mean two different URLs.
"""

from __future__ import annotations

import base64
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from distilforge.core.redact import register_secret

_DEFAULT_PORTS = {"http": 80, "https": 443}
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class UrlError(ValueError):
    """A URL that cannot be used as a teacher endpoint; the message says why (never echoing secrets)."""


@dataclass(frozen=True)
class Url:
    scheme: str
    host: str
    port: int
    path: str  # normalised, starts with "/", no trailing "/" except the root

    def __str__(self) -> str:
        default = _DEFAULT_PORTS[self.scheme] == self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if default else f"{host}:{self.port}"
        # The path is stored and called re-quoted: what the server receives decodes to what was checked.
        return f"{self.scheme}://{netloc}{'' if self.path == '/' else quote(self.path, safe=_PATH_SAFE)}"

    def under(self, entry: Url) -> bool:
        if (self.scheme, self.host, self.port) != (entry.scheme, entry.host, entry.port):
            return False
        return entry.path == "/" or self.path == entry.path or self.path.startswith(entry.path + "/")


def parse_url(text: str) -> Url:
    if not isinstance(text, str) or _CONTROL.search(text):
        raise UrlError("control characters, spaces or backslashes are not allowed in a URL")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise UrlError("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UrlError("only http and https URLs are allowed")
    if "@" in parts.netloc:
        raise UrlError("credentials in the URL are not allowed (use an api_key_env)")
    if parts.fragment or "#" in text:
        raise UrlError("a fragment (#...) is not allowed in a URL")
    if parts.query:
        raise UrlError("a query string is not allowed in a teacher URL")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise UrlError("the URL has no host")
    raw_path = parts.path or "/"
    if re.search(r"%2f|%5c|%00", raw_path, re.I):
        raise UrlError("encoded slashes or NUL in the path are not allowed")
    decoded = unquote(raw_path)
    if _CONTROL.search(decoded):
        raise UrlError("control characters in the path are not allowed")
    if re.search(r"[?#%]", decoded):
        # An encoded ? or # becomes a query or a fragment once some client decodes it, and an encoded %
        # (%252e) decodes to another escape (%2e, then '.'): one string, two URLs.
        raise UrlError("encoded ?, # or % in the path are not allowed")
    path = posixpath.normpath("/" + decoded.lstrip("/"))
    path = "/" + path.lstrip("/")  # normpath keeps a leading "//"
    return Url(scheme, host, port or _DEFAULT_PORTS[scheme], path.rstrip("/") or "/")


def url_allowed(text: str, allowlist: list[str]) -> bool:
    """`text` lies under one of the allowlist's entries (entries that do not parse allow nothing)."""
    url = parse_url(text)
    for entry in allowlist:
        try:
            if url.under(parse_url(entry)):
                return True
        except UrlError:
            continue
    return False


def server_root(url: str) -> str:
    """vLLM's /health lives at the server root: the URL without a trailing /v1."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def authorization(url: str, api_key: str, keyless: bool) -> str:
    """The Authorization header for one server. The API key goes as a bearer token. A keyless server
    (`api_key_env: null`, say a vLLM behind a proxy with a password) whose URL carries user:password gets
    them as HTTP Basic auth, as curl and httpx do. With a key, credentials in the URL are left out: a
    request has one Authorization header, and the key is what an OpenAI-compatible API reads."""
    parts = urlsplit(url)
    if not keyless or not (parts.username or parts.password):
        return f"Bearer {api_key}"
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{unquote(parts.username or '')}:{password}".encode()).decode()
    register_secret(password)
    register_secret(token)
    return f"Basic {token}"
