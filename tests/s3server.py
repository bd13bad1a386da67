"""A real S3 server for the tests: moto's server mode (``moto[server]``) on 127.0.0.1, one per test session.

    def test_x(s3_server):
        uri = s3_server.bucket("b") + "/jester"       # s3://b/jester (endpoint and dummy keys are in os.environ)
        with s3_server.recording() as requests: ...    # the HTTP requests the server saw (method, url, headers)

The server runs in its own process (``python -m moto.server``) on a free port and is stopped when the session
ends; tests skip with the reason only when moto's server cannot be imported.
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
    def __init__(self, log_path, env: dict | None = None):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - open while the server runs, closed in stop()
        here = os.path.dirname(os.path.abspath(log_path))  # the recorder's file goes there, not into the checkout
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=here,
                                     env={**os.environ, "MOTO_RECORDER_FILEPATH": os.path.join(here, "moto_recording"),
                                          **(env or {})})
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on {self.endpoint} (log: {log_path})")
                time.sleep(0.2)

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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
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
def s3_server(tmp_path_factory):
    """The session's S3 server; its endpoint and dummy credentials are set in ``os.environ`` meanwhile."""
    why = moto_missing()
    if why:
        pytest.skip(why)
    server = S3Server(tmp_path_factory.mktemp("s3server") / "moto.log")
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
