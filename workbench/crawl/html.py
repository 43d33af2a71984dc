"""Links, images and declared rights from an HTML page (stdlib parser: tolerant of broken markup)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urldefrag

from workbench.crawl.urls import absolute_url
from workbench.formats.walk import IMAGE_EXTENSIONS

LICENSE_META = {"license", "dc.rights", "dcterms.license", "dcterms.rights", "rights", "copyright",
                "og:license", "twitter:license"}


@dataclass
class PageLinks:
    images: list[str] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)
    license: str | None = None


class _Parser(HTMLParser):
    def __init__(self, base: str):
        super().__init__(convert_charrefs=True)
        self.base, self.out = base, PageLinks()
        self._licenses: list[str] = []

    def _url(self, value: str | None) -> str | None:
        """The absolute URL without its fragment, or None when empty or malformed."""
        url = absolute_url(self.base, value)
        return urldefrag(url)[0] if url else None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): v for k, v in attrs}
        if tag == "base" and (base := self._url(a.get("href"))):
            self.base = base
        elif tag == "img":
            for candidate in [a.get("src"), *(part.strip().split(" ")[0]
                                                for part in (a.get("srcset") or "").split(","))]:
                if (url := self._url(candidate)) and url not in self.out.images:
                    self.out.images.append(url)
        elif tag == "a" and (url := self._url(a.get("href"))):
            target = self.out.images if _looks_like_image(url) else self.out.pages
            if url not in target:
                target.append(url)
        elif tag == "link" and "license" in (a.get("rel") or "").lower().split():
            if url := self._url(a.get("href")):
                self._licenses.append(url)
        elif tag == "meta":
            name = (a.get("name") or a.get("property") or "").lower()
            if name in LICENSE_META and a.get("content"):
                self._licenses.append(a["content"].strip())

    def result(self) -> PageLinks:
        self.out.license = "; ".join(dict.fromkeys(self._licenses)) or None
        return self.out


def _looks_like_image(url: str) -> bool:
    path = url.split("?", 1)[0].lower()
    return any(path.endswith(ext) for ext in IMAGE_EXTENSIONS)


def parse_page(html: str, base_url: str) -> PageLinks:
    parser = _Parser(base_url)
    parser.feed(html)
    parser.close()
    return parser.result()
