"""URLs from pages and headers, which may be malformed (`http://[bad`, a port of 99999)."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit


def absolute_url(base: str, reference: str | None) -> str | None:
    """`reference` resolved against `base`, or None when it is empty or malformed."""
    if not reference or not reference.strip():
        return None
    try:
        url = urljoin(base, reference.strip())
    except ValueError:
        return None
    return None if malformed(url) else url


def malformed(url: str) -> str | None:
    """Why `url` cannot be parsed (bad host brackets, bad port), or None."""
    try:
        urlsplit(url).port  # noqa: B018 (parsing the port checks host and port)
    except ValueError as exc:
        return str(exc)
    return None


def hostname(url: str) -> str:
    return "" if malformed(url) else urlsplit(url).hostname or ""


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
