"""A client for the kiosk's local HTTP API, as the registration app uses it, and the
[local_api] section and token file that go with it."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def write_token(path: Path, mode: int = 0o600) -> str:
    """A fresh token in ``path``, as `make install` makes one (the tests' user stands in for the app)."""
    token = secrets.token_urlsafe(32)
    path.write_text(token + "\n")
    path.chmod(mode)
    return token


def local_api_section(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """[local_api] on a free loopback port with a token file in tmp_path."""
    token_file = tmp_path / "local-api.token"
    if not token_file.exists():
        write_token(token_file)
    return {"enabled": True, "port": 0, "token_file": str(token_file), **settings}


class Api:
    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.token = token

    @classmethod
    def for_agent(cls, agent: Any) -> Api:
        """A client of ``agent``'s local API, holding the token the app would read."""
        assert agent.local_api is not None and agent.local_api.server is not None, agent.local_api.error
        token_file = agent.config.local_api.token_file
        return cls(agent.local_api.address, token_file.read_text().strip() if token_file else None)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float = 60,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        sent = {**self.headers(), **({"Content-Type": "application/json"} if data else {}), **(headers or {})}
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                kind = resp.headers.get("Content-Type", "")
                return resp.status, json.loads(raw) if "json" in kind else raw
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, payload = self.call(method, path, body)
        assert status in (200, 201), (status, payload)
        return payload
