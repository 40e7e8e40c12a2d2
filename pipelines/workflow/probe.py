"""Service probes before any stage runs: the MLflow tracking server (http/https URIs), the S3 endpoint and bucket
of every s3:// location in the config, and a Ray cluster address, each with a short timeout. The first service
that does not answer fails the run at once with ServiceUnreachable: one line naming the service, its endpoint
(never a credential) and the setting to change. An HTTP answer of any status counts as reachable (auth is the
client's business); for S3 (probed unsigned: no credential is sent) a missing bucket fails too, a denied
HeadBucket does not.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from deco_core.config import Config, to_dict
from deco_core.data.storage import ENDPOINT_ENV_VARS, StorageConfig
from deco_core.secrets import redact

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0


class ServiceUnreachable(RuntimeError):
    """A configured service did not answer; the message is one line naming it and the setting to change."""


@dataclass(frozen=True)
class Unreachable:
    """Why one probe failed: the service, its endpoint, the reason and the setting to change."""

    service: str
    endpoint: str
    reason: str
    setting: str
    action: str = "start it or change"

    def line(self) -> str:
        return redact(f"cannot reach the {self.service} at {self.endpoint} ({self.reason}): {self.action} "
                      f"{self.setting}")


def _display(url: str) -> str:
    """``url`` without user info (a URL may carry user:password@)."""
    parsed = urlparse(url)
    if parsed.username is None and parsed.password is None:
        return url
    host = parsed.hostname or ""
    return parsed._replace(netloc=host + (f":{parsed.port}" if parsed.port else "")).geturl()


def _reason(exc: BaseException, timeout: float) -> str:
    inner = getattr(exc, "reason", exc)
    if isinstance(inner, TimeoutError | socket.timeout) or "timed out" in str(inner).lower():
        return f"no answer within {timeout:g}s"
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, socket.gaierror):
        return "unknown host"
    return str(inner).splitlines()[0] if str(inner) else type(inner).__name__


def probe_http(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when something answers HTTP at ``url`` (any status), else the reason."""
    try:
        with urllib.request.urlopen(_display(url), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return _reason(exc, timeout)


def probe_tcp(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout``, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return _reason(exc, timeout)


def probe_bucket(bucket: str, storage: StorageConfig, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the S3 endpoint answers an unsigned HeadBucket for ``bucket`` (or denies it), else the reason."""
    import botocore.session
    from botocore import UNSIGNED, exceptions
    from botocore.config import Config as BotoConfig

    # Unsigned: the probe sends no credential; a private bucket answers 403 (reachable), a missing one 404.
    config = BotoConfig(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1},
                        signature_version=UNSIGNED)
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=storage.resolved_endpoint(), region_name=storage.resolved_region(), config=config)
    try:
        client.head_bucket(Bucket=bucket)
    except (exceptions.EndpointConnectionError, exceptions.ConnectTimeoutError, exceptions.ReadTimeoutError) as exc:
        return f"no answer within {timeout:g}s" if "timeout" in type(exc).__name__.lower() else "connection refused"
    except exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return f"bucket {bucket!r} does not exist there"
    return None


def _s3_locations(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted config key, s3:// URI) for every s3:// string in the config tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _s3_locations(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _s3_locations(v, f"{key}[{i}]")
    elif isinstance(node, str) and node.startswith(("s3://", "s3a://")):
        yield key, node


def _endpoint_setting(storage: StorageConfig) -> str:
    if storage.endpoint_url:
        return "data.storage.endpoint_url"
    return next((name for name in ENDPOINT_ENV_VARS if os.environ.get(name)), "data.storage.endpoint_url")


def storage_problems(cfg: Config, timeout: float = PROBE_TIMEOUT_S) -> Iterator[Unreachable]:
    """One probe per bucket named anywhere in the config (pipeline.root, data sources, model paths, ...)."""
    storage = cfg.data.storage
    buckets: dict[str, str] = {}
    for key, uri in _s3_locations(to_dict(cfg)):
        buckets.setdefault(uri.split("://", 1)[1].split("/", 1)[0], key)
    endpoint = storage.resolved_endpoint() or f"https://s3.{storage.resolved_region()}.amazonaws.com"
    for bucket, key in buckets.items():
        reason = probe_bucket(bucket, storage, timeout)
        if reason:
            service = f"S3 endpoint for bucket {bucket} ({key})"
            if "does not exist" in reason:
                yield Unreachable(service, endpoint, reason, key, "create the bucket or change")
            else:
                yield Unreachable(service, endpoint, reason, f"{_endpoint_setting(storage)} (or {key})")
            return  # one endpoint: the other buckets would say the same


def tracking_problem(tracking_uri: str, from_config: bool, timeout: float = PROBE_TIMEOUT_S) -> Unreachable | None:
    """The tracking server behind an http(s) tracking URI; local stores (sqlite, file) need no probe."""
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return None
    reason = probe_http(tracking_uri, timeout)
    setting = "tracking.tracking_uri" if from_config else "MLFLOW_TRACKING_URI (or tracking.tracking_uri)"
    return Unreachable("MLflow tracking server", _display(tracking_uri), reason, setting) if reason else None


def ray_problem(address: str | None, timeout: float = PROBE_TIMEOUT_S, setting: str = "ray.address",
                service: str = "Ray cluster") -> Unreachable | None:
    """A Ray address: ``http(s)://`` (a dashboard / Jobs API) answers HTTP; ``ray://host:port`` or ``host:port``
    (a GCS or client server) accepts TCP; ``auto``/``local``/unset is found or started by Ray itself."""
    if not address or address in ("auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme in ("http", "https"):
        reason = probe_http(address, timeout)
    elif parsed.hostname and parsed.port:
        reason = probe_tcp(parsed.hostname, parsed.port, timeout)
    else:
        return None
    return Unreachable(service, _display(address), reason, setting) if reason else None


def probe_services(cfg: Config, tracking_uri: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Probe every configured service; ServiceUnreachable (one line) for the first that does not answer."""
    problems = [*storage_problems(cfg, timeout)]
    if tracking_uri:
        problems.append(tracking_problem(tracking_uri, bool(cfg.tracking.tracking_uri), timeout))
    problems.append(ray_problem(cfg.ray.address, timeout))
    found = [p for p in problems if p is not None]
    if found:
        raise ServiceUnreachable(found[0].line())
    log.debug("services reachable (tracking %s, ray %s)", tracking_uri, cfg.ray.address or "local")
