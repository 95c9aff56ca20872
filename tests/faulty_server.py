"""A misbehaving HTTP/1.1 server on 127.0.0.1 for the network-fault battery (B4).

Rule and battery numbers are those of docs/threat-model.rst.

Pure stdlib (socket, ssl, threading). Each test starts its own :class:`FaultyServer` on an
ephemeral port; every connection is served by its own thread according to a :class:`Fault`:

* ``answer``      -- wait ``delay`` (plus or minus a uniform ``jitter``), then answer 200 with
  ``body`` (a valid token JSON by default) and close.
* ``never_answer`` -- read the request, then say nothing until the server stops.
* ``reset``       -- read the request fully, then close with ``SO_LINGER`` 0 (a TCP RST).
* ``cut_mid_body`` -- send the headers with the full ``Content-Length``, half the body, close.
* ``slow_drip``   -- send the headers, then one body byte every ``drip_interval`` s for ever.
* ``slow_close``  -- send the full response (with ``Content-Length``), keep the socket open.
* ``garbage``     -- (TLS) read the request, then write bytes that are no TLS record under
  the TLS layer: the client fails with a TLS error *after* its request was sent.
* ``drip_status`` -- send the whole answer one byte every ``drip_interval`` s, starting with
  the status line (each byte well inside the read timeout).
* ``drip_headers`` -- send the status line at once, then the headers one byte at a time.
* ``endless_body`` -- a chunked body of JSON whitespace, as fast as the client reads, until
  it hangs up.
* ``bomb``        -- a chunked gzip body that inflates to ``bomb_bytes`` of zeros (a
  compression bomb), produced as fast as the client reads.

``answer`` with ``encoding="gzip"`` or ``"deflate"`` compresses ``body`` and says so in
``Content-Encoding`` (whatever the client asked for, as some proxies do).

Loopback helpers for the connect phase: :func:`closed_port` (connection refused) and
:class:`Blackhole` (a listener that never accepts, its backlog full: connects time out).
Nothing here ever touches a non-loopback address.
"""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import json
import random
import socket
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
JOIN_TIMEOUT = 2.0
#: Reading a request never takes longer than this (the clients under test are local).
REQUEST_READ_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 64 * 1024

Mode = Literal[
    "answer",
    "never_answer",
    "reset",
    "cut_mid_body",
    "slow_drip",
    "slow_close",
    "garbage",
    "drip_status",
    "drip_headers",
    "endless_body",
    "bomb",
]


def token_json(prefix: str = "net") -> bytes:
    """A valid token response body (Bearer, an hour, a rotated refresh token)."""
    return json.dumps(
        {
            "access_token": f"{prefix}-access-token-0123456789",
            "refresh_token": f"{prefix}-refresh-token-0123456789",
            "token_type": "Bearer",
            "expires_in": 3600,
        }
    ).encode()


@dataclass(frozen=True)
class Fault:
    """How every connection to the server misbehaves."""

    mode: Mode
    delay: float = 0.0
    jitter: float = 0.0
    body: bytes = field(default_factory=token_json)
    drip_interval: float = 0.3
    #: Declared length of the dripped body (the drip never gets there).
    drip_length: int = 4096
    #: ``answer``: "gzip" or "deflate" compresses the body (and says so).
    encoding: str = ""
    #: ``bomb``: decoded size of the body.
    bomb_bytes: int = 1 << 30


@dataclass(frozen=True)
class Request:
    """One HTTP request the server read completely."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("ascii", "replace"))


class FaultyServer:
    """A one-fault HTTP/1.1 server; use it as a context manager (start, then bounded stop)."""

    def __init__(
        self, fault: Fault, *, ssl_context: ssl.SSLContext | None = None, seed: int = 4
    ) -> None:
        self.fault = fault
        self.ssl_context = ssl_context
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        #: Requests read completely, in arrival order.
        self.requests: list[Request] = []
        self.connections = 0
        #: TLS handshakes that failed (the client refused our certificate).
        self.tls_failures = 0
        #: Body bytes sent by ``slow_drip``.
        self.dripped = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="faulty-accept")

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{HOST}:{self.port}"

    def start(self) -> FaultyServer:
        self._acceptor.start()
        return self

    def stop(self) -> list[str]:
        """Stop, unblock and join every thread (bounded); return the names still alive.

        Idempotent: the counters are final once it returned.
        """
        self._stopping.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)
        self._acceptor.join(JOIN_TIMEOUT)
        self._listener.close()
        with self._lock:
            threads = [self._acceptor, *self._threads]
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in sockets:
            sock.close()
        return [thread.name for thread in threads if thread.is_alive()]

    def __enter__(self) -> FaultyServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        alive = self.stop()
        assert not alive, f"server threads did not stop: {alive}"

    # -- serving -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._sockets.append(conn)
                thread = threading.Thread(
                    target=self._serve, args=(conn,), name=f"faulty-conn-{number}", daemon=True
                )
                self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        sock = raw
        try:
            raw.settimeout(REQUEST_READ_TIMEOUT)
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(raw, server_side=True)
                except (ssl.SSLError, OSError):
                    with self._lock:
                        self.tls_failures += 1
                    return
                with self._lock:
                    self._sockets.append(sock)
            request = _read_request(sock)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            self._misbehave(sock)
        except OSError:
            pass  # the client went away, or stop() shut the socket down
        finally:
            sock.close()

    def _misbehave(self, sock: socket.socket) -> None:
        fault = self.fault
        mode = fault.mode
        if mode == "answer":
            with self._lock:
                pause = fault.delay + self._random.uniform(-fault.jitter, fault.jitter)
            if self._stopping.wait(max(0.0, pause)):
                return
            body = _encode(fault.body, fault.encoding)
            sock.sendall(_head(len(body), close=True, encoding=fault.encoding) + body)
        elif mode in ("drip_status", "drip_headers"):
            answer = _head(len(fault.body), close=True) + fault.body
            if mode == "drip_headers":
                status_line, answer = answer.split(b"\r\n", 1)
                sock.sendall(status_line + b"\r\n")
            for byte in answer:
                if self._stopping.wait(fault.drip_interval):
                    return
                sock.sendall(bytes([byte]))
                with self._lock:
                    self.dripped += 1
        elif mode == "endless_body":
            sock.sendall(_chunked_head())
            chunk = b" " * 65536
            frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            while not self._stopping.is_set():
                sock.sendall(frame)
        elif mode == "bomb":
            sock.sendall(_chunked_head(encoding="gzip"))
            compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
            zeros = bytes(1 << 20)
            for _ in range(fault.bomb_bytes >> 20):
                if self._stopping.is_set():
                    return
                data = compressor.compress(zeros)
                if data:
                    sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            tail = compressor.flush()
            sock.sendall(f"{len(tail):x}\r\n".encode() + tail + b"\r\n0\r\n\r\n")
        elif mode == "never_answer":
            self._stopping.wait()
        elif mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "cut_mid_body":
            half = fault.body[: len(fault.body) // 2]
            sock.sendall(_head(len(fault.body), close=True) + half)
        elif mode == "slow_drip":
            sock.sendall(_head(fault.drip_length, close=True))
            while not self._stopping.wait(fault.drip_interval):
                sock.sendall(b" ")  # JSON whitespace: a valid prefix for ever
                with self._lock:
                    self.dripped += 1
        elif mode == "slow_close":
            sock.sendall(_head(len(fault.body), close=False) + fault.body)
            self._stopping.wait()
        elif mode == "garbage":
            # Under the TLS layer: the client's next TLS read finds no valid record.
            socket.socket.sendall(sock, b"\x17\x03\x03\x00\x10" + b"\x00" * 16)
            self._stopping.wait(1.0)


def _head(length: int, *, close: bool, encoding: str = "") -> bytes:
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        "Cache-Control: no-store",
    ]
    if encoding:
        lines.append(f"Content-Encoding: {encoding}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _chunked_head(encoding: str = "") -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", "Transfer-Encoding: chunked"]
    if encoding:
        lines.append(f"Content-Encoding: {encoding}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _encode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, mtime=0)
    if encoding == "deflate":
        return zlib.compress(body)
    assert not encoding, encoding
    return body


def _read_request(sock: socket.socket) -> Request | None:
    """Read one request (headers and a ``Content-Length`` body); ``None`` if cut short."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(8192)
        if not chunk or len(data) > MAX_REQUEST_BYTES:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _version = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(8192)
        if not chunk:
            return None
        body += chunk
    return Request(method=method, path=path, headers=headers, body=body[:length])


def _shutdown(sock: socket.socket) -> None:
    """Wake any thread blocked on ``sock`` (the plain-socket call, even on a TLS socket)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


# -- connect-phase faults --------------------------------------------------------------


def closed_port() -> int:
    """A loopback port that was just bound and closed: connecting there is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Blackhole:
    """A loopback listener that never accepts, its accept queue full: SYNs are dropped.

    Linux keeps ``backlog + 1`` completed connections queued; once they are there, further
    SYNs get no answer and a client's ``connect`` waits until its timeout. :meth:`verify`
    checks that this really happens on this kernel.
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._fillers: list[socket.socket] = []

    def fill(self, probe_timeout: float = 0.2, attempts: int = 8) -> bool:
        """Queue connections until one times out; return whether one did."""
        for _ in range(attempts):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(probe_timeout)
            self._fillers.append(sock)
            try:
                sock.connect((HOST, self.port))
            except TimeoutError:
                return True
            except OSError:
                return False
        return False

    def close(self) -> None:
        for sock in self._fillers:
            sock.close()
        self._listener.close()


# -- TLS material ------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate (with ``cryptography``) a CA and a 127.0.0.1 server certificate, valid 1 day."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slice-connect test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files
