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
