"""A kiosk with the operator console, for the console's tests: a real agent with simulated
devices, a real mosquitto and the reference receiver, two accounts, and a plain HTTP client
that behaves like the console's own pages (cookies, the forms' CSRF tokens)."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from agent.console.accounts import Accounts
from agent.daemon import Agent
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.support.config import agent_config, receiver_config
from tests.support.local_api import Api, local_api_section

SUPERVISOR, OFFICER = "sam", "olive"
PASSWORDS = {SUPERVISOR: "supervisor-pass-1", OFFICER: "officer-pass-22"}


class ConsoleKiosk:
    def __init__(self, tmp_path: Path, broker: MosquittoBroker, **console: Any) -> None:
        self.tmp_path = tmp_path
        self.config = agent_config(
            tmp_path, broker.port, capture={"mode": "on-demand"},
            devices={"finger": {"driver": "sim-finger", "seed": 11},
                     "camera": {"driver": "sim-camera", "seed": 2}},
            local_api=local_api_section(tmp_path),
            console={"enabled": True, "port": 0, "approval": "required", **console})
        accounts = Accounts(self.config.console.users_file)
        if not self.config.console.users_file.exists():
            accounts.add(SUPERVISOR, "supervisor", PASSWORDS[SUPERVISOR])
            accounts.add(OFFICER, "officer", PASSWORDS[OFFICER])
        self.out = tmp_path / "received"
        self.receiver = Receiver(receiver_config(self.out, self.config))
        self.receiver.start()
        self.agent = Agent(self.config)
        self.agent.start()
        assert self.agent.console is not None and self.agent.console.server is not None, self.agent.console
        self.base = self.agent.console.address
        self.api = Api.for_agent(self.agent)

    @property
    def registrations(self) -> Any:
        return self.agent.registrations

    def register(self, applicant: str = "APP-1") -> str:
        """One completed registration through the local API: finger 1 and the face captured,
        fingers 2-10 recorded as exceptions (quick: two captures)."""
        api = self.api
        sid = api.ok("POST", "/v1/sessions", {"applicant_ref": applicant, "operator_id": "op-7"})["id"]
        for position in range(2, 11):
            api.ok("POST", f"/v1/sessions/{sid}/exceptions", {"position": position, "code": "UP",
                                                               "reason": "bandaged"})
        while api.ok("GET", f"/v1/sessions/{sid}")["next"] is not None:
            api.ok("POST", f"/v1/sessions/{sid}/capture")
        assert api.ok("POST", f"/v1/sessions/{sid}/complete")["state"] == "completed"
        return sid

    def received(self, sid: str) -> bool:
        return (self.out / self.config.kiosk.id / "registrations" / f"{sid}.complete.json").exists()

    def stop(self) -> None:
        self.agent.stop()
        self.receiver.stop()


class Client:
    """HTTP to the console as its pages would send it; every header can be overridden."""

    def __init__(self, base: str, context: Any = None) -> None:
        url = urllib.parse.urlsplit(base)
        self.base, self.host, self.port = base, url.hostname or "", url.port or 0
        self.tls = url.scheme == "https"
        self.context = context
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str, list[str]]:
        conn: http.client.HTTPConnection
        if self.tls:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = {"Host": f"{self.host}:{self.port}"}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        sent.update(headers or {})
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        set_cookies = resp.headers.get_all("Set-Cookie") or []
        for raw in set_cookies:
            jar = SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        conn.close()
        found = re.search(r'name="csrf" value="([^"]*)"', text)
        if found:
            self.csrf = found.group(1)
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, text, set_cookies

    def get(self, path: str) -> tuple[int, dict[str, str], str, list[str]]:
        return self.request("GET", path)

    def post(self, path: str, fields: dict[str, str], csrf: bool = True,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str, list[str]]:
        form = {**({"csrf": self.csrf} if csrf else {}), **fields}
        body = urllib.parse.urlencode(form).encode()
        sent = {"Content-Type": "application/x-www-form-urlencoded", "Origin": self.base, **(headers or {})}
        return self.request("POST", path, body, sent)

    def sign_in(self, name: str, password: str) -> tuple[int, dict[str, str], str, list[str]]:
        self.get("/signin")
        return self.post("/signin", {"name": name, "password": password, "language": "en"})


def audit(kiosk: ConsoleKiosk) -> list[dict[str, Any]]:
    """The console's audit rows (and refused sign-ins), newest first."""
    store = kiosk.agent.console.audit_store
    assert store is not None
    return store.recent_audit(200)
