"""Filesystems for dataset and artifact URIs: local paths, file:// and s3:// (any S3-compatible endpoint).

Credentials are never part of `StorageConfig`: s3fs/botocore and pyarrow read them from the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN) or the usual AWS credential chain.
Messages are passed through `deco_core.secrets.redact` before they are logged or raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs

from deco_core.secrets import redact

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables consulted, in order, when `StorageConfig.endpoint_url` is unset.
ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


class StorageError(RuntimeError):
    """A storage operation failed after retries; the message names the endpoint and URI, never a secret."""


@dataclass
class StorageConfig:
    """Where and how to reach object storage (no credentials here: they come from the environment).

    endpoint_url: S3 endpoint, e.g. "http://127.0.0.1:9000"; None -> env AWS_ENDPOINT_URL_S3 /
        AWS_ENDPOINT_URL, else AWS's default endpoint.
    region: S3 region; None -> env AWS_DEFAULT_REGION / AWS_REGION, else "us-east-1".
    anon: anonymous (unsigned) access to public buckets.
    retries, backoff_s: `with_retries` attempts and the first back-off (doubled each retry).
    connect_timeout_s, read_timeout_s: botocore socket timeouts, kept small so an unreachable
        endpoint fails in bounded time.
    """

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    retries: int = 3
    backoff_s: float = 0.5
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 30.0

    def resolved_endpoint(self) -> str | None:
        """The endpoint actually used: the configured one, else the first set environment variable."""
        if self.endpoint_url:
            return self.endpoint_url
        for name in ENDPOINT_ENV_VARS:
            if os.environ.get(name):
                return os.environ[name]
        return None

    def resolved_region(self) -> str:
        """The region actually used (config, then environment, then us-east-1)."""
        return self.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"


def is_remote(uri: str) -> bool:
    """True for URIs with a non-file scheme (s3://...)."""
    scheme = urlparse(uri).scheme
    return bool(scheme) and scheme != "file" and len(scheme) > 1  # len>1: keep Windows drive letters local


def _scheme(uri: str) -> str:
    scheme = urlparse(uri).scheme
    return scheme if is_remote(uri) else "file"


def _local_path(uri: str) -> str:
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


def _s3_kwargs(cfg: StorageConfig) -> dict:
    """s3fs constructor arguments: endpoint, region and small botocore timeouts/retries."""
    client_kwargs: dict = {"region_name": cfg.resolved_region()}
    endpoint = cfg.resolved_endpoint()
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    config_kwargs = {
        "connect_timeout": cfg.connect_timeout_s,
        "read_timeout": cfg.read_timeout_s,
        "retries": {"max_attempts": 1, "mode": "standard"},  # `with_retries` does the back-off
    }
    return {"anon": cfg.anon, "client_kwargs": client_kwargs, "config_kwargs": config_kwargs}


def get_filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (filesystem, path inside it) for a local path, file:// URI or s3://bucket/prefix URI."""
    cfg = cfg or StorageConfig()
    scheme = _scheme(uri)
    if scheme == "file":
        return fsspec.filesystem("file"), _local_path(uri)
    if scheme in ("s3", "s3a"):
        fs = fsspec.filesystem("s3", **_s3_kwargs(cfg))
        fs.retries = 2  # s3fs's own retry loop; ours (`with_retries`) wraps it with back-off
        path = uri.split("://", 1)[1].rstrip("/")
        if not path or path.startswith("/"):
            raise ValueError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/prefix")
        return fs, path
    raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r}; expected a local path, file:// or s3://")


def pyarrow_filesystem(uri: str, cfg: StorageConfig | None = None) -> pafs.FileSystem | None:
    """A pyarrow filesystem for `ray.data.read_*(paths, filesystem=...)`; None for local paths.

    For s3:// we use pyarrow's native S3FileSystem (C++, no GIL in Ray read tasks). Its pickle holds
    no credentials: each Ray worker resolves them from its own environment (pass them through the
    runtime env if the cluster's workers lack them). The retry strategy is not pickled either.
    """
    cfg = cfg or StorageConfig()
    scheme = _scheme(uri)
    if scheme == "file":
        return None
    if scheme not in ("s3", "s3a"):
        raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r}; expected a local path, file:// or s3://")
    kwargs: dict = {
        "region": cfg.resolved_region(),
        "anonymous": cfg.anon,
        "connect_timeout": cfg.connect_timeout_s,
        "request_timeout": cfg.read_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max(cfg.retries, 1)),
    }
    endpoint = cfg.resolved_endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        if not parsed.scheme or not parsed.netloc:
            raise ValueError(f"S3 endpoint {endpoint!r} must look like http(s)://host[:port]")
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with "/" (keeps the scheme; no doubled slashes)."""
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if not is_remote(base) and not base.startswith("file://"):
        return os.path.join(base, *clean)
    return "/".join([base.rstrip("/"), *clean])


def _connection_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "could not talk to the endpoint" (worth retrying)."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.timeout, socket.gaierror]
    try:
        from botocore import exceptions as bex

        types += [bex.ConnectionError, bex.HTTPClientError]
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def copy_dir(src: str | os.PathLike, dst: str | os.PathLike, cfg: StorageConfig | None = None, *,
             names: Iterable[str] | None = None) -> str:
    """Copy the contents of folder ``src`` into folder ``dst`` — local → local, local → URI or URI → local —
    with `with_retries` around every remote call; returns ``dst``.

    ``names``: copy only these entries of ``src`` (files, through `copy_file`, or sub-folders) instead of
    everything. Raises FileNotFoundError naming ``src`` when there is nothing to copy, ValueError for URI → URI.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if is_remote(src) and is_remote(dst):
        raise ValueError(f"copy_dir({src!r}, {dst!r}): one side must be a local folder")
    upload, download = is_remote(dst), is_remote(src)
    fs, path = get_filesystem(dst if upload else src, cfg)
    entries = [(n, join_uri(src, n), join_uri(dst, n)) for n in names] if names is not None else [("", src, dst)]
    if download:
        if not with_retries(lambda: fs.find(path), f"list {src}", cfg, uri=src):
            raise FileNotFoundError(f"{src}: no files under this prefix")
        os.makedirs(dst, exist_ok=True)
    elif not os.path.isdir(src):
        raise FileNotFoundError(f"{src}: not a folder")
    elif upload:
        with_retries(lambda: fs.makedirs(path, exist_ok=True), f"create {dst}", cfg, uri=dst)
    for name, s, d in entries:
        s_path = get_filesystem(s, cfg)[1] if is_remote(s) else s
        d_path = get_filesystem(d, cfg)[1] if is_remote(d) else d
        is_dir = os.path.isdir(s) if not is_remote(s) else with_retries(lambda p=s_path: fs.isdir(p), f"stat {s}",
                                                                         cfg, uri=s)
        if name and not is_dir:
            copy_file(s, d, cfg, what=f"{'upload' if upload else 'download' if download else 'copy'} {name}")
        elif not is_remote(s) and not is_remote(d):
            _copy_local(s, d, is_dir)
        elif is_remote(d):
            src_arg = s.rstrip("/") + "/" if is_dir else s  # trailing '/': a folder's contents, not the folder
            with_retries(lambda a=src_arg, b=d_path, r=is_dir: fs.put(a, b, recursive=r), f"upload {name or s}", cfg,
                         uri=d)
        else:
            src_arg = s_path.rstrip("/") + "/" if is_dir else s_path
            with_retries(lambda a=src_arg, b=d, r=is_dir: fs.get(a, b, recursive=r), f"download {name or s}", cfg,
                         uri=s)
    return dst


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, cfg: StorageConfig | None = None, *,
              what: str | None = None) -> str:
    """Copy one file to the file path ``dst`` — local → local, local → URI or URI → local — with `with_retries`
    around the remote call (``what`` names it in messages); returns ``dst``. An upload is one ``put_file``: the
    object becomes visible only once it is complete. Raises ValueError for URI → URI."""
    src, dst = os.fspath(src), os.fspath(dst)
    if is_remote(src) and is_remote(dst):
        raise ValueError(f"copy_file({src!r}, {dst!r}): one side must be a local file")
    if is_remote(dst):
        fs, path = get_filesystem(dst, cfg)
        with_retries(lambda: fs.put_file(src, path), what or f"upload {os.path.basename(src)}", cfg, uri=dst)
    elif is_remote(src):
        fs, path = get_filesystem(src, cfg)
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        with_retries(lambda: fs.get_file(path, dst), what or f"download {os.path.basename(path)}", cfg, uri=src)
    else:
        _copy_local(src, dst, False)
    return dst


def _copy_local(src: str, dst: str, is_dir: bool) -> None:
    if is_dir:
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        shutil.copy2(src, dst)


def upload_dir(local: str | os.PathLike, uri: str, cfg: StorageConfig | None = None) -> str:
    """`copy_dir` from a local folder to ``uri``; returns ``uri``."""
    return copy_dir(local, uri, cfg)


def download_dir(uri: str, local: str | os.PathLike, cfg: StorageConfig | None = None) -> str:
    """`copy_dir` from ``uri`` into local folder ``local``; returns ``local`` as a string."""
    return copy_dir(uri, local, cfg)


@contextlib.contextmanager
def local_copy(uri: str, cfg: StorageConfig | None = None, prefix: str = "deco-") -> Iterator[str]:
    """A local folder holding ``uri``'s contents for the ``with`` block: the path itself when ``uri`` is local,
    else a temporary download that is removed on exit."""
    if not is_remote(uri):
        yield get_filesystem(uri, cfg)[1]
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        log.info("downloading %s to %s", uri, tmp)
        yield copy_dir(uri, tmp, cfg)


def endpoint_name(uri: str, cfg: StorageConfig | None = None) -> str:
    """Human-readable name of where `uri` lives, for error messages."""
    cfg = cfg or StorageConfig()
    if _scheme(uri) == "file":
        return "local filesystem"
    return cfg.resolved_endpoint() or f"default {_scheme(uri)} endpoint"


def with_retries(fn: Callable[[], T], what: str, cfg: StorageConfig | None = None, *, uri: str = "") -> T:
    """Call `fn()`, retrying connection errors with exponential back-off; then raise StorageError.

    Other errors are not retried: a missing object/bucket or a denied access is re-raised at once with
    the same type and a message naming `uri`; anything else propagates unchanged.
    """
    cfg = cfg or StorageConfig()
    attempts = max(cfg.retries, 1)
    retryable = _connection_error_types()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retryable as exc:
            where = endpoint_name(uri, cfg) if uri else (cfg.resolved_endpoint() or "default endpoint")
            if attempt == attempts:
                msg = (
                    f"{what} failed: cannot reach storage endpoint {where} for {uri or '?'} after "
                    f"{attempts} attempt(s): {type(exc).__name__}: {exc}"
                )
                raise StorageError(redact(msg)) from None
            delay = cfg.backoff_s * 2 ** (attempt - 1)
            log.warning(redact(f"{what}: {type(exc).__name__} talking to {where} (attempt {attempt}/{attempts}); "
                               f"retrying in {delay:.1f}s"))
            time.sleep(delay)
        except (FileNotFoundError, PermissionError) as exc:
            if not uri or uri in str(exc):
                raise
            raise type(exc)(redact(f"{what} {uri}: {exc}")) from exc
    raise AssertionError("unreachable")  # pragma: no cover
