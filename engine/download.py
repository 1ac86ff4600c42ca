"""HTTP(S) downloads of large checkpoint files, with urllib only.

The data goes to a `.part` file that a later call resumes with an HTTP Range request; transient
failures (connection drops, timeouts, 5xx) are retried with exponential backoff; a connection that
delivers nothing for `stall_timeout` seconds counts as dropped. Google Drive answers big files with
a "can't scan this file for viruses" HTML page whose form (or, in older pages, a `confirm=` link or
`download_warning` cookie) leads to the file; a quota or sign-in page is reported, never saved.

Every URL on the way (the source, each redirect, a confirm page's form action or link) must be https,
or http where the source itself is http (a local mirror): an https download is never downgraded and
no other scheme (file:, ftp:, data:) is ever opened. The bytes are capped (`size_cap`): an answer
announcing more is refused before it is read, a stream that passes the cap is stopped and its
`.part` file deleted, so that a retry starts clean.
"""

from __future__ import annotations

import html.parser
import http.client
import http.cookiejar
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO

from .checkpoints.safe_load import looks_like_html

# (bytes in the .part file, the file's size or None): called as data arrives, on the download's thread
ProgressCallback = Callable[[int, int | None], None]

# Google Drive's direct-download endpoint; FFCLIP_DRIVE_URL points it elsewhere (tests, mirrors).
DEFAULT_DRIVE_URL = "https://drive.usercontent.google.com/download"
CHUNK = 1 << 20
MAX_HTML = 2 << 20  # an HTML answer larger than this is not a confirm page
USER_AGENT = "ffclip-edit-downloader/1"
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
MAX_UNKNOWN_SIZE = 4 << 30  # the cap for a file of unknown size: no checkpoint we fetch comes near it
SIZE_MARGIN = 1 << 20  # allowed beyond a known size, with 1 % of it


class DownloadError(RuntimeError):
    """A download failed for good; the message says why and what the user can do."""


def size_cap(expected: int | None) -> int:
    """The most bytes a download may bring: its expected size plus 1 % and 1 MiB, or MAX_UNKNOWN_SIZE."""
    return MAX_UNKNOWN_SIZE if expected is None else expected + expected // 100 + SIZE_MARGIN


# --- schemes ------------------------------------------------------------------------------------


def allowed_schemes(source: str) -> frozenset[str]:
    """What a download from `source` may follow: https, and http only when the source is http."""
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme not in ("http", "https"):
        raise scheme_refusal(source, frozenset({"https"}), "a download from")
    return frozenset({"https"}) if scheme == "https" else frozenset({"http", "https"})


def scheme_refusal(url: str, allowed: frozenset[str], what: str) -> DownloadError:
    scheme = urllib.parse.urlsplit(url).scheme.lower() or "(none)"
    if scheme == "http" and "http" not in allowed:
        why = "an https download is never downgraded to http:"
    else:
        why = f"the {scheme}: scheme is not allowed (only https:, and http: from an http: source)"
    return DownloadError(f"refused {what} {url}: {why}")


def check_scheme(url: str, allowed: frozenset[str], what: str) -> str:
    if urllib.parse.urlsplit(url).scheme.lower() not in allowed:
        raise scheme_refusal(url, allowed, what)
    return url


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, which would follow ftp: too, limited to the download's schemes."""

    def __init__(self, allowed: frozenset[str]) -> None:
        super().__init__()
        self.allowed = allowed

    def http_error_302(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message
    ) -> urllib.response.addinfourl | None:
        target = headers.get("location") or headers.get("uri")
        url = urllib.parse.urljoin(req.full_url, target) if target else None
        if url and urllib.parse.urlsplit(url).scheme.lower() not in self.allowed:
            fp.close()  # the redirect's body is never read
            raise scheme_refusal(url, self.allowed, "a redirect to")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(allowed: frozenset[str], cookies: http.cookiejar.CookieJar) -> urllib.request.OpenerDirector:
    """build_opener's handlers without file:, ftp: and data:, whose redirects are checked."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _GuardedRedirects(allowed),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPCookieProcessor(cookies),
    ):
        opener.add_handler(handler)
    return opener


# --- Google Drive ------------------------------------------------------------------------------


def drive_base_url() -> str:
    return os.environ.get("FFCLIP_DRIVE_URL", DEFAULT_DRIVE_URL)


def drive_url(file_id: str, base: str | None = None) -> str:
    return f"{base or drive_base_url()}?{urllib.parse.urlencode({'id': file_id, 'export': 'download'})}"


def drive_view_url(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view"


# --- Google Drive's HTML answers ----------------------------------------------------------------


class _FormParser(html.parser.HTMLParser):
    """Collects each <form>'s action and its named <input> values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[dict[str, str], dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a, {}))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value", "")


def confirm_url(page: str, page_url: str, cookies: http.cookiejar.CookieJar | None = None) -> str | None:
    """The URL that a Drive "can't scan for viruses" page sends the browser on to, if it is one."""
    parser = _FormParser()
    parser.feed(page)
    for attrs, inputs in parser.forms:
        if "confirm" in inputs or attrs.get("id") == "download-form":
            action = urllib.parse.urljoin(page_url, attrs.get("action") or page_url)
            return f"{action.split('?')[0]}?{urllib.parse.urlencode(inputs)}"
    token = None
    match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if match:
        token = match.group(1)
    elif cookies is not None:
        token = next((c.value for c in cookies if c.name.startswith("download_warning")), None)
    if token is None:
        return None
    parts = urllib.parse.urlsplit(page_url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["confirm"] = token
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _page_title(page: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", page, re.IGNORECASE | re.DOTALL)
    return " ".join(match.group(1).split()) if match else ""


def html_refusal(page: str, url: str) -> DownloadError:
    """A clear error for an HTML answer that is not a confirm page (quota, sign-in, not found)."""
    text = page.lower()
    title = _page_title(page)
    if "quota" in text or "too many users have viewed or downloaded" in text:
        why = "Google Drive refuses the download for now: the file's download quota is exceeded"
    elif "accounts.google.com" in text or "sign in" in text:
        why = "the server asks to sign in (the file is not public, or the link changed)"
    else:
        titled = f" titled {title!r}" if title else ""
        why = f"the server answered with an HTML page{titled} instead of the file"
    return DownloadError(
        f"{why} ({url}); nothing was saved. Try again later, or download the file in "
        "a browser and run `ffclip-engine models import FILE`"
    )


# --- progress -----------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (a line per 10 % when stderr is not a terminal)."""

    def __init__(self, label: str, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.label, self.stream, self.enabled = label, stream or sys.stderr, enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last = 0.0
        self.last_decile = -1
        self.start_bytes: int | None = None

    def update(self, done: int, total: int | None, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.start_bytes is None:
            self.start_bytes = done
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        rate = (done - self.start_bytes) / max(now - self.start, 1e-6)
        frac = done / total if total else None
        if self.tty:
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac)) if frac is not None else ""
            pct = f"{100 * frac:5.1f}%" if frac is not None else ""
            sizes = f"{_mb(done)}/{_mb(total)}" if total else _mb(done)
            self.stream.write(f"\r{self.label} [{bar}] {pct} {sizes} {_mb(rate)}/s   ")
            if final:
                self.stream.write("\n")
        else:
            decile = int(10 * frac) if frac is not None else -1
            if final or decile > self.last_decile:
                self.last_decile = decile
                pct = f"{100 * frac:.0f}% " if frac is not None else ""
                self.stream.write(f"{self.label}: {pct}{_mb(done)} ({_mb(rate)}/s)\n")
        self.stream.flush()


def _mb(n: float | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


# --- the download loop --------------------------------------------------------------------------


@dataclass
class DownloadResult:
    path: Path
    size: int
    resumed_from: int  # bytes already in the .part file when this call started
    attempts: int
    received: int  # bytes transferred by this call


class _Transient(Exception):
    """A failure worth retrying (resuming from what the .part file holds)."""


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(start, total) from 'bytes START-END/TOTAL' or 'bytes */TOTAL'."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", header or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


class _Downloader:
    def __init__(
        self,
        url: str,
        part: Path,
        stall_timeout: float,
        progress: Progress,
        on_progress: ProgressCallback | None,
        max_bytes: int,
    ) -> None:
        self.url, self.part, self.stall_timeout, self.progress = url, part, stall_timeout, progress
        self.on_progress, self.max_bytes = on_progress, max_bytes
        self.allowed = allowed_schemes(url)
        self.cookies = http.cookiejar.CookieJar()
        self.opener = _opener(self.allowed, self.cookies)
        self.received = 0
        self.total: int | None = None

    def _open(self, url: str, offset: int) -> http.client.HTTPResponse:
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            return self.opener.open(request, timeout=self.stall_timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:
                return exc  # type: ignore[return-value]  # handled by the caller
            if exc.code in TRANSIENT_HTTP:
                raise _Transient(f"HTTP {exc.code} from {url}") from None
            raise DownloadError(f"HTTP {exc.code} {exc.reason} from {url}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _Transient(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None

    def attempt(self) -> bool:
        """One request, following Drive confirm pages; True when the .part file is complete."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        url = self.url
        for _hop in range(4):
            response = self._open(url, offset)
            with response:
                if response.status == 416:  # nothing left past `offset`
                    return self._range_end(response, offset)
                self._check_announced(response, offset)
                first = self._read(response)
                ctype = response.headers.get("Content-Type", "")
                if ctype.startswith("text/html") or (first and looks_like_html(first[:4096])):
                    page = (first + response.read(MAX_HTML)).decode("utf-8", "replace")
                    next_url = confirm_url(page, response.geturl(), self.cookies)
                    if next_url is None or next_url == url:
                        raise html_refusal(page, self.url)
                    url = check_scheme(next_url, self.allowed, "a confirmation page's link to")
                    continue
                return self._stream(response, first, offset)
        raise DownloadError(f"too many confirm pages from {self.url}; nothing was saved")

    def _check_announced(self, response: http.client.HTTPResponse, offset: int) -> None:
        """Refuse, before reading it, an answer whose headers announce more than the cap."""
        start, total = _content_range(response.headers.get("Content-Range"))
        length = response.headers.get("Content-Length", "")
        if total is None and length.isdigit():
            total = int(length) + (offset if response.status == 206 and start == offset else 0)
        if total is not None and total > self.max_bytes:
            self.part.unlink(missing_ok=True)  # what it holds belongs to a file we will not take
            raise DownloadError(
                f"the server announces {total:,} bytes, more than the {self.max_bytes:,} that "
                f"{self._name} can be; nothing was read"
            )

    @property
    def _name(self) -> str:
        return self.part.name.removesuffix(".part")

    def _range_end(self, response: http.client.HTTPResponse, offset: int) -> bool:
        _, total = _content_range(response.headers.get("Content-Range"))
        if total is not None and total == offset:
            self.total = total
            self._report(offset)
            return True
        self.part.unlink(missing_ok=True)  # the .part is longer than the file: start over
        raise _Transient(f"server cannot resume at byte {offset}; starting again")

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        # read1 returns what has arrived: a stalled read then loses nothing already received
        try:
            return response.read1(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(f"{type(exc).__name__} while reading: {exc}") from None

    def _stream(self, response: http.client.HTTPResponse, first: bytes, offset: int) -> bool:
        start, total = _content_range(response.headers.get("Content-Range"))
        if response.status == 206 and start == offset:
            mode = "ab"
            self.total = total
        else:  # a full answer: the server ignored the Range header, or there was none
            mode, offset = "wb", 0
            length = response.headers.get("Content-Length")
            self.total = int(length) if length and length.isdigit() else None
        done = offset
        with self.part.open(mode) as f:
            chunk = first
            while chunk:
                if done + len(chunk) > self.max_bytes:
                    f.close()
                    self._over_cap(done + len(chunk))
                f.write(chunk)
                done += len(chunk)
                self.received += len(chunk)
                self.progress.update(done, self.total)
                self._report(done)
                chunk = self._read(response)
        if self.total is not None and done < self.total:
            raise _Transient(f"connection closed at {done} of {self.total} bytes")
        if self.total is not None and done > self.total:
            self.part.unlink(missing_ok=True)
            raise DownloadError(f"received {done} bytes, more than the announced {self.total}")
        self.progress.update(done, self.total, final=True)
        return True

    def _over_cap(self, received: int) -> None:
        self.part.unlink(missing_ok=True)  # a later fetch starts clean
        raise DownloadError(
            f"stopped at {received:,} bytes: more than the {self.max_bytes:,} that {self._name} can be; "
            "the partial file was deleted"
        )

    def _report(self, done: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, self.total)


def download(
    url: str,
    part: str | os.PathLike[str],
    *,
    label: str | None = None,
    retries: int = 5,
    stall_timeout: float = 60.0,
    backoff: float = 2.0,
    max_backoff: float = 60.0,
    progress: bool = True,
    stream: IO[str] | None = None,
    on_progress: ProgressCallback | None = None,
    max_bytes: int = MAX_UNKNOWN_SIZE,
) -> DownloadResult:
    """Download `url` into `part` (resuming what it holds); the caller verifies and renames it.

    `retries` counts consecutive failed attempts: an attempt that received data resets it, so a
    long download over a flaky line keeps going as long as it makes progress. `on_progress(done,
    total)` follows the bytes (the daemon's status); an exception it raises ends the download
    there, the .part file kept for a later resume. More than `max_bytes` (see `size_cap`) ends it
    for good and deletes the .part file; a URL whose scheme is not allowed (`allowed_schemes`) ends
    it for good.
    """
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    resumed_from = part.stat().st_size if part.exists() else 0
    bar = Progress(label or part.name.removesuffix(".part"), stream, progress)
    loader = _Downloader(url, part, stall_timeout, bar, on_progress, max_bytes)
    if on_progress is not None:
        on_progress(resumed_from, None)
    failures = attempts = 0
    while True:
        attempts += 1
        before = loader.received
        try:
            loader.attempt()
            return DownloadResult(part, part.stat().st_size, resumed_from, attempts, loader.received)
        except _Transient as exc:
            failures = 0 if loader.received > before else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"giving up on {url} after {attempts} attempts ({exc}); {part} keeps what arrived "
                    "and the next fetch resumes from there"
                ) from None
            # after a drop that delivered data, resume at once; otherwise back off exponentially
            delay = 0.0 if failures == 0 else min(backoff * 2 ** (failures - 1), max_backoff)
            if progress:
                (stream or sys.stderr).write(f"\n  {exc}; resuming in {delay:.1f} s\n")
            time.sleep(delay)
