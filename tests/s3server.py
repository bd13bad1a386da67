"""A real S3 server for the tests: moto's server mode (``moto[server]``) on 127.0.0.1, one per test session.

    def test_x(s3_server):
        uri = s3_server.bucket("b") + "/jester"       # s3://b/jester (endpoint and dummy keys are in os.environ)
        with s3_server.recording() as requests: ...    # the HTTP requests the server saw (method, url, headers)

The server runs in its own process (``python -m moto.server``) on a free port (started again on another one when
that port was taken before moto bound it) and is stopped when the session ends; the fixture sets the AWS variables
for the requesting test only. Tests skip with the reason only when moto's server cannot be imported.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_missing() -> str | None:
    """Why no server can be started here, or None."""
    for mod in ("moto", "flask", "werkzeug"):
        if importlib.util.find_spec(mod) is None:
            return f"moto[server] is not installed ({mod} missing): pip install 'moto[server]==5.2.5' (make venv does)"
    return None


class S3Server:
    def __init__(self, log_path, env: dict | None = None, *, tries: int = 5):
        # moto takes a port number, not a bound socket: a free port can be taken by another process before moto
        # binds it, so a server that does not come up is started again on another port
        self._log = open(log_path, "wb")  # noqa: SIM115 - open while the server runs, closed in stop()
        here = os.path.dirname(os.path.abspath(log_path))  # the recorder's file goes there, not into the checkout
        for attempt in range(tries):
            self.port = free_port()
            self.endpoint = f"http://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                stderr=subprocess.STDOUT, cwd=here,
                env={**os.environ, "MOTO_RECORDER_FILEPATH": os.path.join(here, "moto_recording"), **(env or {})})
            if self._wait_up():
                return
            self._end_proc()
        self._log.close()
        raise RuntimeError(f"moto server did not start after {tries} tries (log: {log_path})")

    def _wait_up(self, timeout: float = 60.0) -> bool:
        """True once this server (our process, not whatever else holds the port) answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # e.g. the port was taken meanwhile
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2).read()
                time.sleep(0.3)  # a server that lost the port to another one exits right after its bind fails
                return self.proc.poll() is None
            except OSError:
                time.sleep(0.2)
        return False

    def _end_proc(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def env(self) -> dict:
        return {**ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if new) and return ``s3://name``."""
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=self.endpoint, access_key="testing", secret_key="testing",
                               region="us-east-1", allow_bucket_creation=True)
        if fs.get_file_info(name).type == pafs.FileType.NotFound:
            fs.create_dir(name)
        return f"s3://{name}"

    def _api(self, what: str, method: str = "POST") -> bytes:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{what}", method=method, data=b"" if
                                     method == "POST" else None)
        return urllib.request.urlopen(req, timeout=10).read()

    @contextlib.contextmanager
    def recording(self):
        """Yield a list that holds, after the block, every request the server received during it."""
        self._api("reset-recording")
        self._api("start-recording")
        got: list[dict] = []
        try:
            yield got
        finally:
            self._api("stop-recording")
            lines = self._api("download-recording", "GET").decode().splitlines()
            got.extend(json.loads(x) for x in lines if x.strip())
            self._api("reset-recording")

    def stop(self) -> None:
        self._end_proc()
        self._log.close()


class SlowProxy:
    """A TCP proxy on 127.0.0.1 to ``port`` that delays every ``chunk`` bytes coming back by ``delay`` seconds
    (a slow link, so that a download can be killed half-way)."""

    def __init__(self, port: int, *, delay: float = 0.05, chunk: int = 1024):
        import threading

        self.target, self.delay, self.chunk = port, delay, chunk
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.delay), daemon=True).start()

    def _pump(self, src, dst, delay: float) -> None:
        try:
            while data := src.recv(self.chunk):
                time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of the S3 server that breaks chosen responses (a failing server).

    Point an S3 client at ``proxy.endpoint``. Every request is forwarded as it is; ``proxy.fault`` (None: pass
    everything) is called for each ranged GET as ``fault(path, first, last, body)`` (``first``/``last`` the
    byte range asked for, ``body`` the server's answer) and returns one of::

        None                   the server's answer, untouched
        ("status", code)       an S3 error response with that HTTP status instead
        ("short", n)           only the first n bytes, announced as such (Content-Length / Content-Range say n)
        ("cut", n)             the full length announced, n bytes sent, then the connection closed
        ("body", data)         ``data`` instead of the body (same length: corrupt bytes)

    ``proxy.hits`` counts the faults injected.
    """

    def __init__(self, target_port: int):
        import http.server
        import threading

        proxy = self
        self.target, self.fault, self.hits = target_port, None, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _forward(self):
                import http.client

                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else None
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target, timeout=30)
                try:
                    conn.request(self.command, self.path, body=data, headers=dict(self.headers.items()))
                    r = conn.getresponse()
                    body = r.read()
                    status, headers = r.status, [(k, v) for k, v in r.getheaders()
                                                 if k.lower() not in ("transfer-encoding", "connection")]
                finally:
                    conn.close()
                rng = self.headers.get("Range")
                fault = proxy.fault
                if fault is not None and self.command == "GET" and rng and status == 206:
                    first, last = (int(x) for x in rng.split("=", 1)[1].split("-"))
                    verdict = fault(self.path.split("?")[0], first, last, body)
                    if verdict is not None:
                        proxy.hits += 1
                        return self._faulty(verdict, status, headers, body, first)
                self._send(status, headers, body)

            def _faulty(self, verdict, status, headers, body, first):
                kind, arg = verdict
                if kind == "status":
                    err = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>Injected{arg}</Code>"
                           f"<Message>injected fault</Message></Error>").encode()
                    return self._send(arg, [("Content-Type", "application/xml")], err)
                if kind == "short":
                    keep = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-range")]
                    total = next((v.rsplit("/", 1)[1] for k, v in headers if k.lower() == "content-range"), "*")
                    keep.append(("Content-Range", f"bytes {first}-{first + arg - 1}/{total}"))
                    return self._send(status, keep, body[:arg])
                if kind == "cut":
                    self.send_response(status)
                    for k, v in headers:
                        if k.lower() != "content-length":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:arg])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                if kind == "body":
                    return self._send(status, headers, arg)
                raise ValueError(f"unknown fault {kind!r}")

            def _send(self, status, headers, body):
                self.send_response(status)
                for k, v in headers:
                    if k.lower() != "content-length" or self.command == "HEAD":  # HEAD: the object's length
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        # bound to port 0 and kept: no window in which another process can take the port
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def s3_server_session(tmp_path_factory):
    """The session's S3 server (started on first use). It sets nothing in ``os.environ``: see ``s3_server``."""
    why = moto_missing()
    if why:
        pytest.skip(why)
    server = S3Server(tmp_path_factory.mktemp("s3server") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server(s3_server_session, monkeypatch):
    """The session's S3 server, its endpoint and dummy credentials in ``os.environ`` for this test only (tests
    that run after it see the environment they would have seen without it)."""
    for k, v in s3_server_session.env().items():
        monkeypatch.setenv(k, v)
    return s3_server_session
