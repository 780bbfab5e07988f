"""Secrets: nothing leaves the check without passing through a Masker.

Passwords arrive in many shapes (percent-encoded or not, in a URL's userinfo or a `?password=`
option, several URLs joined by `;` behind Sentinel, Sentinel's own password beside them), and
library errors and log records repeat them. Every text the report, the logs and usage errors
print is masked here first.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from urllib.parse import unquote

from brokerctl.brokercheck.contract import SENTINEL_URL_SEPARATOR, is_sentinel_url

MASK = "***"

URL_USERINFO = re.compile(
    # Greedy up to the token's last `@`: a password with an unencoded `/`, `?`, `#` or `@`
    # still ends at the `@` before the host, where urlsplit would stop at the first `/`.
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s'\"<>`]*)@"
)
SECRET_PARAM = re.compile(
    # `?password=`, `&password=`, `;sentinel_password=`, `?auth_token=`...: any option whose
    # name speaks of a credential, in a URL query or a `name=value` list.
    r"(?P<name>(?:^|[?&;,\s])[^=&?;,\s'\"]*(?:pass|secret|token|auth|credential)"
    r"[^=&?;,\s'\"]*=)(?P<value>[^&;,\s'\"#]+)",
    re.IGNORECASE,
)
_SECRET_FIELD = re.compile(
    # `password='x'`, `"password": "x"` in library messages and reprs of keyword arguments.
    r"(?P<name>pass(?:word|wd)?['\"]?\s*(?:=|:\s)\s*['\"]?)(?P<value>[^\s'\"&,})\]]+)",
    re.IGNORECASE,
)


def _masked_userinfo(match: re.Match[str]) -> str:
    """Keep the user name of a URL's userinfo, mask whatever follows its first `:`."""
    userinfo = match["userinfo"]
    user, colon, _ = userinfo.partition(":")
    if colon and "/" not in user:
        return f"{match['scheme']}{user}:{MASK}@"
    if colon or any(mark in userinfo for mark in "@/?#"):
        return f"{match['scheme']}{MASK}@"
    return match.group(0)  # a user name alone is no secret


def url_secrets(url: str) -> set[str]:
    """Return every credential written in `url`, however it is written, raw and decoded.

    The userinfo's password (reserved characters encoded or not), and the value of every
    query option that names a credential (`?password=`, `&sentinel_password=`). Several URLs
    joined by `;` or `,` (Sentinel style) are read one by one.
    """
    found: set[str] = set()
    for piece in {url, *re.split(r"[;,]", url)}:
        for match in URL_USERINFO.finditer(piece):
            _, colon, password = match["userinfo"].partition(":")
            if colon and password:
                found.add(password)
        for match in SECRET_PARAM.finditer(piece):
            if match["value"]:
                found.add(match["value"])
    return found | {unquote(secret) for secret in found} - {""}


def _mask_occurrences(text: str, secrets: Iterable[str]) -> str:
    """Mask every occurrence of every secret, overlapping ones as one span.

    Replacing one secret after another would cut an overlapping one in two and leave its
    tail readable (a URL's tail read as a "password" overlaps the real one).
    """
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        start = text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    pieces, position = [], 0
    for start, end in sorted(spans):
        if end <= position:
            continue
        if start > position:
            pieces += [text[position:start], MASK]
        elif not pieces:
            pieces.append(MASK)
        position = max(position, end)
    return "".join([*pieces, text[position:]])


class Masker:
    """Replaces known passwords, and any credential inside a URL or option, with `***`."""

    def __init__(self, urls: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        for url in urls:
            self.add_url(url)

    def add_url(self, url: str | None) -> None:
        """Remember the credentials of `url` (raw and percent-decoded) to mask them everywhere."""
        if url:
            self._secrets.update(url_secrets(url))

    def add_secret(self, secret: str | None) -> None:
        """Remember a password that travels outside any URL (Sentinel's own password)."""
        if secret:
            self._secrets.add(secret)

    def __call__(self, text: object) -> str:
        """Return `text` as a string with every known secret and URL credential masked."""
        masked = _mask_occurrences(str(text), self._secrets)
        # Options first: a bare `@` inside `?password=` would otherwise end a URL's userinfo.
        masked = _SECRET_FIELD.sub(lambda match: f"{match['name']}{MASK}", masked)
        masked = SECRET_PARAM.sub(lambda match: f"{match['name']}{MASK}", masked)
        return URL_USERINFO.sub(_masked_userinfo, masked)


def masked_url(mask: Masker, url: str) -> str:
    """Return `url` masked for display; a Sentinel URL one `;`-separated URL at a time.

    Masked whole, a Sentinel URL's userinfo would be read from its first `://` to its last `@`
    (the greedy rule that catches unencoded passwords) and hide every host but the last.
    """
    if is_sentinel_url(url):
        return SENTINEL_URL_SEPARATOR.join(
            mask(piece) for piece in url.split(SENTINEL_URL_SEPARATOR)
        )
    return mask(url)


class _MaskingFilter(logging.Filter):
    """Masks log records from redis, kombu and celery before any handler prints them."""

    def __init__(self, mask: Masker) -> None:
        super().__init__()
        self.mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.mask(record.getMessage())
        record.args = None
        if record.exc_info:
            record.msg += " (" + self.mask(record.exc_info[1]) + ")"
            record.exc_info = None
        return True


def configure_logging(mask: Masker) -> None:
    """Send library warnings to stderr, masked; without this Python's fallback prints them raw."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_MaskingFilter(mask))
    handler.setFormatter(logging.Formatter("brokercheck: %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
