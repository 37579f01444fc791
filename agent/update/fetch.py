"""The remote command ``update.apply``: fetch a bundle over HTTPS and hand it to the updater.

An admin's signed command names a URL and pins the SHA-256 of the bundle file. The kiosk
refuses, before any byte is read, a URL that is not HTTPS on an allow-listed host (or under
the exact ``update.bundle_url_prefix``); it verifies the server's certificate, does not follow
redirects (they would leave the allow-list), stops at ``update.max_bundle_bytes``, counts
every byte against the uplink's daily budget, and drops the file when its hash is not the
pinned one. Only then does the bundle reach the updater, which checks the release
signature itself: the pin stops a swapped file early, the signature decides what runs.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from agent.clock.watch import tls_clock_hint
from agent.remote.auth import CommandError
from agent.runtime import Runtime
from agent.update.config import UpdateConfig
from agent.update.spool import DOWNLOAD, hand_over, spool_dir

CHUNK = 64 * 1024
MAX_URL = 2048


class UpdateApplyArgs(BaseModel):
    # Not agent.remote.commands.Args: that module registers this command, so it imports us.
    model_config = ConfigDict(extra="forbid")

    #: https://host[:port]/path of the bundle (no credentials in the URL).
    url: str = Field(max_length=MAX_URL)
    #: The SHA-256 (hex) of the bundle file, as `sha256sum` prints it.
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


def check_url(url: str, config: UpdateConfig) -> tuple[str, int, str]:
    """(host, port, path-and-query) of an acceptable bundle URL; CommandError otherwise."""
    if re.search(r"[\x00-\x20\x7f-\uffff\\]", url):
        raise CommandError("invalid_args", "the URL holds spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise CommandError("invalid_args", f"not a URL: {exc}") from None
    if parts.scheme != "https":
        raise CommandError("invalid_args", "the bundle URL must be https://")
    if parts.username is not None or parts.password is not None or not parts.hostname:
        raise CommandError("invalid_args", "the bundle URL must name a host and carry no credentials")
    host = parts.hostname.lower()
    allowed = {h.lower() for h in config.allowed_hosts}
    prefix = config.bundle_url_prefix
    if host not in allowed and not (prefix.startswith("https://") and url.startswith(prefix)):
        raise CommandError("forbidden", f"host {host!r} is not in update.allowed_hosts and the URL is not "
                                        "under update.bundle_url_prefix")
    path = parts.path or "/"
    if any(seg in (".", "..") for seg in path.split("/")) or "%2e" in path.lower() or "%2f" in path.lower():
        # A server may resolve them and serve from outside the prefix the operator allowed.
        raise CommandError("invalid_args", "the bundle URL's path holds dot segments or encoded dots/slashes")
    return host, port, path + (f"?{parts.query}" if parts.query else "")


def _context(config: UpdateConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def download(url: str, sha256: str, runtime: Runtime) -> tuple[Path, int]:
    """The bundle, in the spool folder with its hash checked, and its size."""
    config = runtime.config.update
    host, port, target = check_url(url, config)
    uplink = runtime.uplink()
    spool = spool_dir(runtime.config.state_dir)
    spool.mkdir(mode=0o700, exist_ok=True)
    dest = spool / DOWNLOAD
    conn = http.client.HTTPSConnection(host, port, context=_context(config),
                                       timeout=config.download_timeout_s)
    response: http.client.HTTPResponse | None = None
    try:
        try:
            conn.request("GET", target, headers={"Accept-Encoding": "identity"})
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise CommandError("failed", f"cannot fetch the bundle from {host}: {exc}"
                                         + tls_clock_hint(exc)) from None
        if response.status != 200:
            raise CommandError("failed", f"{host} answered HTTP {response.status} "
                                         "(redirects are not followed)")
        length = response.getheader("Content-Length")
        declared = int(length) if length and length.isdigit() else None
        if declared is not None and declared > config.max_bundle_bytes:
            raise CommandError("invalid_args", f"the bundle is {declared} bytes, more than "
                                               f"update.max_bundle_bytes ({config.max_bundle_bytes})")
        left = uplink.remaining() if uplink is not None else None
        if declared is not None and left is not None and declared > left:
            raise CommandError("failed", f"the bundle ({declared} bytes) exceeds what is left of today's "
                                         f"uplink budget ({left} bytes)")
        size = _stream(response, dest, sha256.lower(), config.max_bundle_bytes, uplink)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        # A response read to its end closes by itself; one abandoned (cap, budget, hash) holds
        # the socket until closed here.
        if response is not None:
            response.close()
        conn.close()
    return dest, size


def _stream(response: http.client.HTTPResponse, dest: Path, sha256: str, cap: int, uplink: Any) -> int:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise CommandError("failed", f"the download broke off after {size} bytes: {exc}") from None
            if not block:
                break
            size += len(block)
            if size > cap:
                raise CommandError("invalid_args",
                                   f"the bundle is larger than update.max_bundle_bytes ({cap})")
            # Counted as it arrives: a download cut short still cost the bytes it moved.
            if uplink is not None and not uplink.charge(len(block)):
                raise CommandError("failed",
                                   f"today's uplink budget ran out after {size} bytes of the bundle")
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha256:
        raise CommandError("invalid_args", f"the bundle's SHA-256 is {digest.hexdigest()}, not the "
                                           f"{sha256} the command pins; refused")
    return size


def update_apply(runtime: Runtime, args: UpdateApplyArgs) -> dict[str, Any]:
    spool = spool_dir(runtime.config.state_dir)
    path, size = download(args.url, args.sha256, runtime)
    if not hand_over(spool, path):
        path.unlink(missing_ok=True)
        raise CommandError("busy", "another update is waiting for the updater")
    runtime.events.emit("update_accepted", sha256=args.sha256.lower(), bytes=size)
    return {"accepted": True, "sha256": args.sha256.lower(), "bytes": size}
