"""A local HTTP server that serves files the way Google Drive and flaky networks do: dropped
connections, stalls, pauses, 503s, servers that ignore Range, Drive's virus-scan confirm page and
its quota page. Files are keyed by path, or by the `id` query parameter (Drive ids)."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class Behaviour:
    drop_after: list[int] = field(default_factory=list)  # per request: close after N body bytes
    stall_after: list[int] = field(default_factory=list)  # per request: stop sending after N bytes
    pause_at: list[int] = field(default_factory=list)  # next response: hold at these body offsets until resumed
    fail_times: int = 0  # answer 503 this many times first
    ignore_range: bool = False
    drive_confirm: bool = False  # answer the first request with Drive's virus-scan page
    html_instead: str | None = None  # always answer this HTML page


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.log: list[tuple[str, str | None]] = []  # (path + query, Range header)
        self.sent = 0
        self.release = threading.Event()
        self.holding = threading.Event()  # set when a pause_at holds a response
        self.resume = threading.Event()  # set by the test: the held response goes on

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


VIRUS_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="{action}" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="5e1f-77aa">
</form></body></html>"""
QUOTA_PAGE = """<html><head><title>Google Drive - Quota exceeded</title></head><body>
Too many users have viewed or downloaded this file recently. Please try again later.</body></html>"""


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        key = query.get("id", url.path)
        self.server.log.append((self.path, self.headers.get("Range")))
        if key not in self.server.files:
            return self._send(404, b"not found", "text/plain")
        b = self.server.behaviour.setdefault(key, Behaviour())
        if b.html_instead is not None:
            return self._send(200, b.html_instead.encode(), "text/html; charset=utf-8")
        if b.fail_times > 0:
            b.fail_times -= 1
            return self._send(503, b"busy", "text/plain")
        if b.drive_confirm and not (query.get("confirm") == "t" and query.get("uuid") == "5e1f-77aa"):
            page = VIRUS_PAGE.format(action=f"{self.server.base}/download", id=key)
            return self._send(200, page.encode(), "text/html; charset=utf-8")
        self._send_file(self.server.files[key], b)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, data: bytes, b: Behaviour) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng and not b.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        sent = 0
        for offset in b.pause_at:  # each pause: the test sees `holding`, clears it, sets `resume`
            self.server.sent += offset - sent  # counted first: the client may be done before write returns
            self.wfile.write(body[sent:offset])
            self.wfile.flush()
            sent = offset
            self.server.holding.set()
            self.server.resume.wait(30)
            self.server.resume.clear()
        b.pause_at = []
        body = body[sent:]
        drop = b.drop_after.pop(0) if b.drop_after else None
        stall = b.stall_after.pop(0) if b.stall_after else None
        cut = drop if drop is not None else stall
        self.server.sent += len(body[:cut] if cut is not None else body)
        self.wfile.write(body[:cut] if cut is not None else body)
        self.wfile.flush()
        if stall is not None:
            self.server.release.wait(10)  # hold the connection open, sending nothing
        if cut is not None:
            self.close_connection = True


def start_server() -> Server:
    srv = Server()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


def stop_server(srv: Server) -> None:
    srv.release.set()
    srv.resume.set()
    srv.shutdown()
    srv.server_close()
