"""A minimal local Slice stand-in for the benchmarks: token endpoint, revoke, and API.

stdlib only (``http.server.ThreadingHTTPServer``), no database, no validation: every token
request (refresh or authorization code) is answered 200 with fresh random tokens as JSON,
exactly the shape Slice documents. ``GET /api/v1/...`` answers a small JSON page and
``GET /stats`` the number of token requests served so far (the benchmarks check that one
renewal cost exactly one POST).

Run it in its own process so it does not share the benchmark's GIL::

    python -m benchmarks.token_server --port 0 [--latency-ms 20]

It prints ``PORT <n>`` once listening and serves until stdin closes or it is terminated.
"""

from __future__ import annotations

import argparse
import itertools
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

TOKEN_PATH = "/oauth/token"
REVOKE_PATH = "/oauth/revoke"
API_PREFIX = "/api/v1/"
API_BODY = json.dumps({"result": [{"id": 1, "status": "delivered"}], "ok": True}).encode()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) drops SYNs under a burst of new connections, which then
    # retransmit after a second: not what a token endpoint looks like.
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], latency: float) -> None:
        super().__init__(address, Handler)
        self.latency = latency
        self.token_requests = itertools.count()
        self.served = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response (headers and body together) and no Nagle delay: the server
    # must not add latency that either side of a comparison would pay differently.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode("ascii", "replace"))
        if self.server.latency:
            time.sleep(self.server.latency)
        if self.path == TOKEN_PATH:
            grant = form.get("grant_type", [""])[0]
            if grant not in ("refresh_token", "authorization_code"):
                self._send(400, b'{"error": "unsupported_grant_type"}')
                return
            self.server.served = next(self.server.token_requests) + 1
            payload = {
                "access_token": secrets.token_urlsafe(32),
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": secrets.token_urlsafe(32),
            }
            self._send(200, json.dumps(payload).encode())
        elif self.path == REVOKE_PATH:
            self._send(200, b"{}")
        else:
            self._send(404, b'{"error": "not_found"}')

    def do_GET(self) -> None:
        if self.server.latency:
            time.sleep(self.server.latency)
        if self.path.startswith(API_PREFIX):
            self._send(200, API_BODY)
        elif self.path == "/stats":
            self._send(200, json.dumps({"token_requests": self.server.served}).encode())
        else:
            self._send(404, b'{"error": "not_found"}')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = Server(("127.0.0.1", args.port), args.latency_ms / 1000)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.daemon = True
    thread.start()
    print(f"PORT {server.server_address[1]}", flush=True)
    # Serve until the parent closes our stdin (or kills us).
    sys.stdin.read()
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
