"""One redaction step for every text that leaves the process: logs, run files, errors, API answers.

Secrets come from the environment only. Their values are registered here when they are read (a
teacher's key, a database password), and `redact` masks them, plus any credentials written inside a
URL (`https://user:secret@host`), wherever they appear in a message.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
# scheme://user:password@host or scheme://token@host
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
MASK = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret's value so that `redact` masks it (values shorter than 6 characters are
    not masked: they would mangle ordinary text and are no real secret)."""
    if value and len(value) >= 6:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    if not text:
        return text
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def strip_userinfo(url: str) -> str:
    """The URL without credentials (for run files and answers: where it went, not how it logged in)."""
    try:
        parts = urlsplit(url)
        if parts.username or parts.password or "@" in parts.netloc:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return redact(url)
    return url
