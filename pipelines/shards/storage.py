"""Where bytes live: filesystems (local or any ``pyarrow.fs`` URI), atomic writes, sha256, the manifest.

The one place for these rules (docs/DESIGN.md "Invariants"):

* :func:`resolve` -- a path or URI as ``(pyarrow FileSystem, root)``: local paths (relative is fine), ``file://``,
  ``s3://``, ``gs://``, ``hdfs://`` -- whatever ``pyarrow.fs.FileSystem.from_uri`` understands.
* Every file is written under a temporary name next to its final one (:func:`common.files.temp_name`) and
  renamed into place (:func:`atomic_target` / :func:`write_bytes_atomic` on any filesystem: a local one goes
  through :func:`common.files.atomic_path`, which never follows a planted symlink), so a half-written file is
  never visible under the final name.
* :func:`sha256_file` -- the one content hash (:func:`common.files.sha256`) on any filesystem (manifests,
  caches).
* :func:`read_manifest` -- the one manifest reader: ``(fs, root, manifest)`` for a dataset path or URI.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, parse_qsl, quote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from common import files
from common.files import sha256
from pipelines.errors import ShardError
from pipelines.shards import format as fmt

_BLOCK = 8 << 20
TIMEOUTS = {"connect": 3.0, "request": 10.0, "attempts": 3}  # seconds, seconds (a stalled request), tries
_CRED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


# ----------------------------------------------------------------------------------------------- filesystems
def is_uri(path) -> bool:
    return "://" in os.fspath(path)


def _from_uri(path) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, root)`` as pyarrow opens them (ShardError when the URI cannot be opened)."""
    path = os.fspath(path)
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise ShardError(f"{shown(path)}: cannot open this filesystem URI ({scrub(str(e))})") from None
    return pafs.LocalFileSystem(), os.path.abspath(path).replace(os.sep, "/")


def join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if root else rel


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


# query parameters that carry a credential (pyarrow's S3/GCS options and the usual presigned-URL names)
_SECRET_PARAM = re.compile(r"(?i)(key|secret|token|password|passwd|credential|signature|sig|auth)")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{},;]+")


def _userinfo(text: str) -> tuple[str, str]:
    """``(scheme://, rest)`` with any ``user[:password]@`` removed from ``rest`` -- also when an unencoded ``/``
    in the password would make urlsplit see it as the path."""
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*://)([^@?#]*)@", text)
    if m and ("/" not in m.group(2) or ":" in m.group(2).split("/", 1)[0]):
        return m.group(1), text[m.end():]
    head, _, rest = text.partition("://")
    return head + "://", rest


def shown(uri, rel: str = "") -> str:
    """``uri`` as it may be printed or stored: without userinfo (``s3://KEY:SECRET@b/...``) and without
    credential-like query parameters (``access_key``, ``secret_key``, ``session_token``, ...); the others
    (``endpoint_override``, ``region``) are kept, so the URI still opens with credentials from the environment.
    The one redaction: every URI that reaches a log, an error, a config, a checkpoint or a manifest goes through
    it. ``uri/rel`` (an object inside it) is shown without any query. Local paths come back as they are."""
    text = os.fspath(uri)
    if "://" not in text:
        return f"{text.rstrip('/')}/{rel}" if rel else text
    scheme, rest = _userinfo(text)
    parts = urlsplit(scheme + rest)
    if rel:  # an object inside the dataset: its name, without the filesystem's options
        return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{rel}", "", ""))
    query = "&".join(f"{k}={quote(v, safe='/:')}" for k, v in parse_qsl(parts.query, keep_blank_values=True)
                     if not _SECRET_PARAM.search(k))
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), query, ""))


def scrub(text: str) -> str:
    """``text`` (a log or error line) with every URI in it passed through :func:`shown`."""
    return _URI_IN_TEXT.sub(lambda m: shown(m.group()), text) if "://" in text else text


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "://" in text:
            record.msg, record.args = scrub(text), ()
        return True


def redact_logs() -> None:
    """Pass every line the root logger's handlers write through :func:`scrub` (for CLIs, after logging setup)."""
    for h in logging.getLogger().handlers:
        if not any(isinstance(f, _Redact) for f in h.filters):
            h.addFilter(_Redact())


def has_credentials_in(uri) -> bool:
    """True when ``uri`` itself carries a credential (userinfo or a credential-like query parameter)."""
    text = os.fspath(uri)
    if "://" not in text:
        return False
    scheme, rest = _userinfo(text)
    return len(scheme + rest) != len(text) or any(_SECRET_PARAM.search(k) for k, _ in
                                                  parse_qsl(urlsplit(text).query, keep_blank_values=True))


def _has_s3_credentials(uri: str) -> bool:
    parts = urlsplit(uri)
    query = {k.lower(): v for k, v in parse_qs(parts.query).items()}
    if has_credentials_in(uri) or query.get("anonymous", [""])[0].lower() in ("true", "1"):
        return True
    if any(os.environ.get(k) for k in _CRED_ENV):
        return True
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false":
        return True  # an explicit opt-in to instance-role credentials
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials",
             os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")
    return any(os.path.isfile(f) for f in files)


def resolve(uri, *, timeouts: dict | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, root)`` for a local path or a pyarrow filesystem URI; an S3 filesystem gets ``timeouts``
    (``connect``/``request`` seconds, ``attempts``; defaults :data:`TIMEOUTS`) so an unreachable endpoint fails
    in seconds. ShardError (one line naming the URI) when S3 has no credentials configured at all."""
    uri = os.fspath(uri)
    if uri.lower().startswith("s3://") and not _has_s3_credentials(uri):
        raise ShardError(f"{shown(uri)}: no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         "AWS_PROFILE or ~/.aws/credentials (add ?anonymous=true for a public bucket; set "
                         "AWS_EC2_METADATA_DISABLED=false to use an instance role); runs and manifests store a URI "
                         "without its credentials")
    fs, root = _from_uri(uri)
    if isinstance(fs, pafs.S3FileSystem):
        t = {**TIMEOUTS, **(timeouts or {})}
        kw = dict(fs.__reduce__()[1][0])
        kw.update(connect_timeout=float(t["connect"]), request_timeout=float(t["request"]),
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=int(t["attempts"])))
        fs = pafs.S3FileSystem(**kw)
    return fs, root


def explain(uri: str, e: BaseException, fs=None) -> str:
    """One line for a failed object-store request: what went wrong with ``uri`` and what to check."""
    uri, text = shown(uri), scrub(" ".join(str(e).split()))
    short = text if len(text) <= 240 else text[:237] + "..."
    endpoint = "the default AWS endpoint"
    if isinstance(fs, pafs.S3FileSystem):
        endpoint = fs.__reduce__()[1][0].get("endpoint_override") or endpoint
    low = text.lower()
    if any(s in low for s in ("network_connection", "curlcode", "could not connect", "timeout", "timed out")):
        return (f"{uri}: cannot reach the object store at {endpoint} ({short}); check AWS_ENDPOINT_URL or "
                "?endpoint_override=, the network and that the server is up")
    if any(s in low for s in ("access_denied", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch",
                              "forbidden", "http status 403")):
        return f"{uri}: access denied ({short}); check the credentials (AWS_* variables, profile) and bucket policy"
    if "nosuchbucket" in low or "bucket" in low and "not found" in low:
        return f"{uri}: the bucket does not exist ({short}); check the bucket name in --data"
    return f"{uri}: object store request failed ({short}); check the URI, endpoint and credentials"


def read_manifest_raw(uri, *, timeouts: dict | None = None) -> tuple[pafs.FileSystem, str, dict, bytes]:
    """``(fs, root, manifest, manifest bytes)`` of a dataset at a path or URI (ShardError naming the URI and what
    to check: unreachable endpoint, missing bucket, missing manifest, invalid manifest)."""
    uri = os.fspath(uri)
    fs, root = resolve(uri, timeouts=timeouts)
    where = shown(uri, fmt.MANIFEST_NAME) if is_uri(uri) else join(root, fmt.MANIFEST_NAME)
    try:
        with fs.open_input_stream(join(root, fmt.MANIFEST_NAME)) as f:
            raw = f.read()
    except FileNotFoundError:
        if isinstance(fs, pafs.S3FileSystem):
            bucket = root.split("/", 1)[0]
            try:
                missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
            except (OSError, pa.ArrowException) as e:
                raise ShardError(explain(where, e, fs)) from None
            if missing:
                raise ShardError(f"{where}: bucket {bucket!r} does not exist at this endpoint; check the bucket "
                                 "name in the URI and AWS_ENDPOINT_URL") from None
        raise ShardError(f"{where}: manifest not found (run tools/convert_dataset.py first, or check --data)") from None
    except (OSError, pa.ArrowException) as e:
        raise ShardError(explain(where, e, fs)) from None
    return fs, root, fmt.parse_manifest(raw, where=where), bytes(raw)


# ----------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_target(fs: pafs.FileSystem, path: str) -> Iterator[str]:
    """The temporary path (:func:`common.files.temp_name`) to write ``path`` of ``fs`` under; moved onto ``path``
    when the block ends without an error, deleted otherwise (a disk-full write leaves no temp file behind).
    On a local filesystem this is :func:`common.files.atomic_path`."""
    if isinstance(fs, pafs.LocalFileSystem):
        with files.atomic_path(path) as tmp:
            yield str(tmp)
        return
    tmp = files.temp_name(path)
    try:
        yield tmp
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        raise


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on ``fs`` under a temporary name, then move it into place (:func:`atomic_target`)."""
    with atomic_target(fs, path) as tmp:
        with fs.open_output_stream(tmp) as f:
            f.write(data)


def write_json_atomic(fs: pafs.FileSystem, path: str, obj) -> None:
    write_bytes_atomic(fs, path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


# ----------------------------------------------------------------------------------------------- reading
def read_json(fs: pafs.FileSystem, path: str):
    """Parsed JSON at ``path`` or None if it is missing/unreadable/not JSON."""
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError, pa.ArrowException):
        return None


def sha256_file(fs: pafs.FileSystem | None, path: str) -> tuple[str, int]:
    """``(hex sha256, size in bytes)`` of a file (``fs=None`` or a LocalFileSystem: read locally through one
    reused buffer, so hashing a shard allocates no fresh pages per block)."""
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return sha256(path)
    h = hashlib.sha256()
    size = 0
    with fs.open_input_stream(path) as f:
        while b := f.read(_BLOCK):
            h.update(b)
            size += len(b)
    return h.hexdigest(), size


def read_manifest(path, *, timeouts: dict | None = None) -> tuple[pafs.FileSystem, str, dict]:
    """``(fs, root, manifest)`` of a converted dataset at a local path or URI; ShardError (one line naming the
    manifest and what to check: unreachable endpoint, missing bucket, missing or invalid manifest)."""
    return read_manifest_raw(path, timeouts=timeouts)[:3]
