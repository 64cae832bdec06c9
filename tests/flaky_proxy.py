"""A loopback HTTP proxy in front of the S3 server that fails every Nth request with 503 SlowDown.

It forwards everything else unchanged, so clients see a real S3 endpoint that is transiently
unavailable: the way a busy object store behaves overnight.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FlakyProxy(ThreadingHTTPServer):
    """Counts requests; every ``fail_every``-th one gets a 503 instead of reaching the upstream."""

    daemon_threads = True

    def __init__(self, upstream: str, fail_every: int) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.fail_every = fail_every
        self.requests = 0
        self.failed = 0
        self.lock = threading.Lock()

    def should_fail(self) -> bool:
        with self.lock:
            self.requests += 1
            fail = self.requests % self.fail_every == 0
            self.failed += fail
            return fail


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlakyProxy

    def log_message(self, *args: object) -> None:  # quiet
        return

    def forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.server.should_fail():
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        connection = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}  # 100-continue was answered here
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        # a HEAD answer has no body but the length of the object it describes
        length = response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(payload))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


@contextmanager
def flaky_proxy(upstream: str, fail_every: int = 4) -> Iterator[FlakyProxy]:
    """Serve a :class:`FlakyProxy` on a free loopback port for the block; yield it (``proxy.url``)."""
    proxy = FlakyProxy(upstream, fail_every)
    proxy.url = f"http://127.0.0.1:{proxy.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
