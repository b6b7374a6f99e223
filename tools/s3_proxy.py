"""A small HTTP proxy in front of a local S3 server: it counts what the store sends and adds latency.

    with local_s3() as s3, S3Proxy(s3.endpoint, latency=0.05) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint   # every client now goes through the proxy

Each request waits ``latency`` seconds before it is forwarded (a store across a network), and
the proxy counts, per object path, the GET requests and the body bytes sent back: downloads per
chunk measured at the store, whichever process made them (loader workers included). Requests
are forwarded as they came (the Host header too, so signatures still match a server that does
not check them, as ``local_s3()`` by default).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class S3Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; ``gets[path]`` and ``sent[path]`` count GETs and bytes."""

    def __init__(self, upstream: str, latency: float = 0.0) -> None:
        self.upstream = urlparse(upstream)
        self.latency = latency
        self.gets: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                time.sleep(proxy.latency)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                conn.close()
                if self.command == "GET":
                    path = urlparse(self.path).path
                    with proxy._lock:
                        proxy.gets[path] += 1
                        proxy.sent[path] += len(data)
                self.send_response(reply.status, reply.reason)
                for k, v in reply.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
