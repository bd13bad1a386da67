"""No secret in any output (issue 24): a dataset URI that carries a key and a secret
(``s3://KEY:SECRET@bucket/path?endpoint_override=...``) is used for the filesystem only.

Against the test S3 server (moto, tests/s3server.py), with no credentials in the environment: convert into the
URI, verify it, train from it, then ``eval`` the run -- first without credentials (one line: the stored URI has
none), then with them in the environment -- and a failing convert, verify and train on a missing bucket. Every
file written under the test's folder (configs, checkpoints, metrics, TensorBoard, the node cache, the manifest)
and every line printed is searched for the key and the secret. The redaction itself (:func:`storage.shown`) is
checked on its own in the fast subset.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

from pipelines.shards.storage import has_credentials_in, scrub, shown

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "AKIAQUIETKEY7", "s3cr3t+Wh1sper/value"
TINY = ["--dataset", "jester", "--device", "cpu", "--arch", "resnet18", "--num-segments", "4", "--size", "64",
        "--epochs", "1", "--lr-steps", "1", "--workers", "0", "--ceiling-steps", "0", "--batch-size", "2",
        "--max-steps-per-epoch", "2", "--log-interval", "1"]


def test_shown_removes_userinfo_and_credential_parameters(record):
    cases = {
        f"s3://{KEY}:{SECRET}@b/data/?endpoint_override=127.0.0.1:9000&scheme=http":
            "s3://b/data?endpoint_override=127.0.0.1:9000&scheme=http",
        f"s3://b/data?access_key={KEY}&secret_key=x%2By&session_token=t&region=eu-west-1":
            "s3://b/data?region=eu-west-1",
        f"gs://b/x?anonymous=true&credential={SECRET}": "gs://b/x?anonymous=true",
        "hdfs://user:pw@namenode:8020/data": "hdfs://namenode:8020/data",
        "s3://b/odd@name/data": "s3://b/odd@name/data",
        "/local/path/": "/local/path/",
    }
    for uri, want in cases.items():
        assert shown(uri) == want, uri
        assert has_credentials_in(uri) == (want != uri and uri != "/local/path/" and "odd@" not in uri), uri
    assert shown(f"s3://{KEY}:{SECRET}@b/d?region=r", "manifest.json") == "s3://b/d/manifest.json"
    line = f"wrote s3://{KEY}:{SECRET}@b/d (3 MB); failed: gs://b/x?secret_key={SECRET} (403)"
    assert scrub(line) == "wrote s3://b/d (3 MB); failed: gs://b/x (403)"
    record("URIs with userinfo / credential query parameters, shown or stored", len(cases) + 2,
           "userinfo and access_key/secret_key/session_token/credential... removed, other parameters kept",
           area="security")


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HOME=str(tmp / "home"),
               XDG_CACHE_HOME=str(tmp / "xdg"), AWS_EC2_METADATA_DISABLED="true", **extra)
    return env


def test_credentials_in_uri_reach_no_output(make_raw, s3_server, tmp_path, full, record):
    if not full:
        pytest.skip("convert + train + eval against the S3 server (~1 min): with --run-all-faults")
    bucket = s3_server.bucket("quiet")
    host = s3_server.endpoint.removeprefix("http://")
    cred = f"{KEY}:{quote(SECRET, safe='')}"  # a secret's / and + are percent-encoded in a URI
    uri = f"s3://{cred}@{bucket[5:]}/jester?endpoint_override={host}&scheme=http&region=us-east-1"
    missing = f"s3://{cred}@no-such-bucket/jester?endpoint_override={host}&scheme=http&region=us-east-1"
    raw = Path(make_raw("jester", n_train=4, n_val=2, n_test=1)["root"])
    (tmp_path / "home").mkdir()
    env = _env(tmp_path)
    conv = [sys.executable, str(ROOT / "tools" / "convert_dataset.py")]
    train = [sys.executable, str(ROOT / "train.py")]
    run = tmp_path / "run"
    steps = [  # (command, env, expected status)
        (conv + ["jester", "--raw", str(raw), "--out", uri, "--workers", "1", "--shard-mb", "0.05", "-v"], env, 0),
        (conv + ["verify", uri], env, 0),
        (train + ["train", "--data", uri, "--run-dir", str(run), "--cache-dir", str(tmp_path / "cache"), *TINY], env, 0),
        (train + ["eval", "--run-dir", str(run)], env, 1),  # the stored URI has no credentials, nor has the env
        (train + ["eval", "--run-dir", str(run)], _env(tmp_path, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET), 0),
        (train + ["eval", "--run-dir", str(run), "--data", uri], env, 0),  # given again with the command
        (conv + ["jester", "--raw", str(raw), "--out", missing, "--workers", "1", "-v"], env, 1),
        (conv + ["verify", missing], env, 1),
        (train + ["train", "--data", missing, "--run-dir", str(tmp_path / "run2"), *TINY], env, 1),
    ]
    printed = []
    for cmd, e, want in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=600, cwd=tmp_path)
        printed.append(r.stdout + r.stderr)
        assert r.returncode == want, (cmd[1:3], r.returncode, r.stderr[-3000:])
    assert "no S3 credentials found" in printed[3] and len(printed[3].strip().splitlines()) == 1, printed[3]
    assert "s3://quiet/jester?endpoint_override=" in printed[3]

    stored = json.loads((run / "config.json").read_text())["data"]
    assert stored == f"s3://quiet/jester?endpoint_override={host}&scheme=http&region=us-east-1"
    assert torch.load(run / "last.pt", weights_only=True)["config"]["data"] == stored
    files = [p for p in tmp_path.rglob("*") if p.is_file() and raw not in p.parents]
    assert len(files) > 10 and any(p.suffix == ".pt" for p in files) and any("tfevents" in p.name for p in files)
    written = {str(p.relative_to(tmp_path)): p.read_bytes() for p in files}
    for secret in (SECRET, KEY, SECRET.replace("+", "%2B").replace("/", "%2F")):
        leaks = [name for name, b in written.items() if secret.encode() in b]
        leaks += [f"output of step {i}" for i, text in enumerate(printed) if secret in text]
        assert not leaks, (secret, leaks)
    record("a dataset URI with a key and a secret: convert, verify, train, eval (S3 server), and failing ones",
           len(steps), f"key and secret in none of {len(files)} files written (config, checkpoints, metrics, "
           f"TensorBoard, cache, manifest) nor {len(steps)} commands' output; eval without credentials: one line",
           area="security")
