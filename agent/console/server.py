"""The operator console's listener: its own HTTP(S) server in the agent process.

Same approach as the local API (agent/registration/local_api.py): the standard library's
threading HTTP server, one thread per request, nothing asynchronous. It is a separate
listener with its own sign-in because its users are people with browsers, which the local
API refuses outright; and a page open in the kiosk's browser is exactly who must not drive it.

What every request goes through before any page runs (Host, origin, CSRF, form framing)
is agent/console/forms.py. The session cookie is HttpOnly and SameSite=Strict (and
Secure, named ``__Host-``, under TLS); it holds a random token, nothing else.

Refusals say what happened and that nothing was changed; every action and every refused
sign-in goes to the audit log (agent/remote/audit.py) with who did it. Passwords are never
logged.
"""

from __future__ import annotations

import logging
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.console import figures, pages
from agent.console.accounts import NAME_PATTERN, Accounts
from agent.console.audit import audit_file
from agent.console.config import is_loopback
from agent.console.forms import FormHandler, Redirect, Refused
from agent.console.i18n import LANGUAGES, Translator
from agent.console.sessions import Session, Sessions
from agent.registration.errors import RegistrationError
from agent.remote.audit import RemoteStore
from agent.runtime import Runtime

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"/static/console.css": "text/css; charset=utf-8",
                "/static/console.js": "text/javascript; charset=utf-8"}
DEVICE_TEST_TIMEOUT_S = 15.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    console: Console

    def service_actions(self) -> None:  # each turn of serve_forever: the connection watch
        try:
            self.console.watcher.sample()
        except Exception:  # noqa: BLE001 - a figure must never stop the console
            log.debug("console: sampling the connection failed", exc_info=True)


class Console:
    def __init__(self, runtime: Runtime, audit: RemoteStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.config = runtime.config.console
        assert self.config.users_file is not None  # AgentConfig resolves it
        self.accounts = Accounts(self.config.users_file, max_failures=self.config.max_failures,
                                 lockout_s=self.config.lockout_s)
        self.sessions = Sessions(self.config.idle_timeout_s, clock)
        self.watcher = figures.Watcher(runtime)
        self.audit_store = audit
        self._own_audit: RemoteStore | None = None
        self.server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.address = ""
        self.tls = self.config.tls.cert_file is not None
        self.hosts: set[str] = set()
        #: Why the console is not serving (the agent goes on without it), or None.
        self.error: str | None = None

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        if self.audit_store is None:  # remote management off: the console keeps its own audit
            self._own_audit = RemoteStore(audit_file(self.runtime.config))
            self.audit_store = self._own_audit
        try:
            server = _Server((cfg.host, cfg.port), _handler(self))
        except OSError as exc:
            self.error = f"operator console cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
            log.error("%s; it stays off until console.port (or host) is fixed", self.error)
            return
        if self.tls:
            try:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
            except (OSError, ssl.SSLError) as exc:
                server.server_close()
                self.error = f"operator console: cannot load its TLS certificate or key: {exc}"
                log.error("%s; it stays off", self.error)
                return
            # The handshake happens on the request's own thread, not in the accept loop, so a
            # client that stalls it holds up nobody else.
            server.socket = context.wrap_socket(server.socket, server_side=True,
                                                do_handshake_on_connect=False)
        server.console = self
        self.server = server
        host, port = server.server_address[:2]
        names = {cfg.host, str(host), *cfg.server_names}
        if is_loopback(cfg.host):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        default = 443 if self.tls else 80
        self.hosts = {f"{n}:{port}" for n in names} | ({*names} if port == default else set())
        scheme = "https" if self.tls else "http"
        self.address = f"{scheme}://{'localhost' if is_loopback(cfg.host) else host}:{port}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="console", daemon=True)
        self._thread.start()
        log.info("operator console on %s", self.address)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_audit is not None:
            self._own_audit.close()
            self._own_audit = None

    # --- helpers the handler uses ---------------------------------------------------------------

    def audit(self, who: str, action: str, result: str = "ok", code: str | None = None,
              message: str | None = None, **args: Any) -> None:
        store = self.audit_store
        if store is not None:
            store.audit(request_id=None, operator=f"console:{who}", command=f"console.{action}",
                        args=args, result=result, code=code, message=message)

    def refused_sign_in(self, name: str, code: str, message: str) -> None:
        # Refusals are what anyone at the screen can cause by the thousand: the audit's
        # rate-limited table, which never pushes out a genuine row.
        if self.audit_store is not None:
            self.audit_store.refusal(request_id=None, operator=f"console:{name}",
                                     command="console.sign_in", code=code, message=message)

    def current(self, token: str | None, touch: bool) -> Session | None:
        """The live session of the cookie's token, if its account is unchanged since sign-in."""
        session = self.sessions.get(token, touch=touch)
        if session is None:
            return None
        account = self.accounts.get(session.user)
        if account is None or account.stamp != session.stamp or account.role != session.role:
            self.sessions.end(session.token)  # removed, demoted or given a new password
            return None
        return session


def _handler(console: Console) -> type[BaseHTTPRequestHandler]:
    cookie_name = "__Host-kc_session" if console.tls else "kc_session"
    pre_name = "__Host-kc_signin" if console.tls else "kc_signin"

    class Handler(FormHandler):
        tls = console.tls

        def allowed_hosts(self) -> set[str]:
            return console.hosts

        def __getattr__(self, name: str) -> Any:
            if name.startswith("do_"):  # every other method: the same checks, then 405
                return lambda: self._handle(name[3:])
            raise AttributeError(name)

        # --- the request ---------------------------------------------------------------------

        def _handle(self, method: str) -> None:
            self._cookies_out: list[str] = []
            self._form_read = False
            self._t = Translator(console.config.language)
            self._session: Session | None = None
            try:
                self._check_host()
                url = urlsplit(self.path)
                query = parse_qs(url.query, keep_blank_values=True, max_num_fields=8)
                if method == "GET":
                    self._no_body()
                    self._get(url.path, query)
                elif method == "POST":
                    self._check_origin()
                    self._post(url.path, self._form())
                else:
                    self._no_body()
                    raise Refused(405, "error.method", method=method[:16])
            except Refused as exc:
                self._refused(exc)
            except ValueError:  # parse_qs: too many fields, bad escapes
                self._refused(Refused(400, "error.bad_request"))

        def _signed_in(self, touch: bool = True) -> Session | None:
            self._session = console.current(self._cookie(cookie_name), touch)
            if self._session is not None:
                self._t = Translator(self._session.language)
            return self._session

        def _require(self, supervisor: bool = False) -> Session:
            session = self._signed_in()
            if session is None:
                if self.command == "GET":
                    expired = "?expired=1" if self._cookie(cookie_name) else ""
                    raise Redirect("/signin" + expired)
                raise Refused(401, "error.signed_out")
            if supervisor and session.role != "supervisor":
                raise Refused(403, "error.supervisor_only")
            return session

        # --- pages -----------------------------------------------------------------------------

        def _get(self, path: str, query: dict[str, list[str]]) -> None:
            try:
                if path in STATIC_FILES:
                    return self._send(200, (STATIC / path.rsplit("/", 1)[1]).read_bytes(), STATIC_FILES[path],
                                      cache=True)
                if path == "/signin":
                    return self._signin_page(query)
                if path == "/figures.json":
                    return self._figures()
                session = self._require(supervisor=path == "/approvals")
                flash = session.data.pop("flash", "")
                t = self._t
                if path == "/":
                    f = figures.dashboard(console.runtime, console.watcher)
                    return self._html(200, pages.dashboard(t, f, session, flash))
                if path == "/registrations":
                    q = (query.get("q") or [""])[0].strip()[:64]
                    rows = figures.registrations(console.runtime, q, session.role == "supervisor")
                    return self._html(200, pages.registrations(t, rows, q, session))
                if path == "/approvals":
                    rows = figures.approvals(console.runtime)
                    return self._html(200, pages.approvals(t, rows, session, flash))
            except Redirect as r:
                return self._redirect(r.location)
            raise Refused(404, "error.not_found")

        def _signin_page(self, query: dict[str, list[str]]) -> None:
            if self._signed_in(touch=False) is not None:
                return self._redirect("/")
            language = (query.get("lang") or [""])[0]
            if language in LANGUAGES:
                self._t = Translator(language)
            pre = self._cookie(pre_name)
            if not pre or not re.fullmatch(r"[A-Za-z0-9_-]{43}", pre):
                pre = secrets.token_urlsafe(32)
                self._set_cookie(pre_name, pre)
            message = self._t("signin.expired") if query.get("expired") else ""
            self._html(200, pages.signin(self._t, pre, message))

        def _figures(self) -> None:
            # Not activity: a dashboard left open must still sign itself out when idle.
            session = self._signed_in(touch=False)
            if session is None:
                return self._json(401, {"error": "signed_out", "signin": "/signin?expired=1"})
            f = figures.dashboard(console.runtime, console.watcher)
            self._json(200, pages.figure_texts(self._t, f) | {"blocked": len(f["blocked"])})

        def _post(self, path: str, form: dict[str, str]) -> None:
            if path == "/signin":
                return self._sign_in(form)
            session = self._require(supervisor=path.startswith("/approvals/"))
            self._check_csrf(form, session.csrf)
            if path == "/signout":
                console.sessions.end(session.token)
                console.audit(session.user, "sign_out")
                self._set_cookie(cookie_name, "", max_age=0)
                return self._redirect("/signin")
            if path == "/language":
                if form.get("language") not in LANGUAGES:
                    raise Refused(400, "error.bad_request")
                session.language = form["language"]
                console.audit(session.user, "language", language=session.language)
                return self._redirect("/")
            if path == "/devices/test":
                return self._device_test(session, form.get("device", ""))
            if path in ("/approvals/approve", "/approvals/reject"):
                return self._decide(session, path.rsplit("/", 1)[1], form)
            raise Refused(404, "error.not_found")

        def _sign_in(self, form: dict[str, str]) -> None:
            self._check_csrf(form, self._cookie(pre_name))
            if form.get("language") in LANGUAGES:
                self._t = Translator(form["language"])
            name, password = form.get("name", "").strip(), form.get("password", "")
            result = console.accounts.sign_in(name, password)
            account = result.account
            if account is not None:
                session = console.sessions.create(account.name, account.role, account.stamp, self._t.language)
                console.audit(account.name, "sign_in")
                self._set_cookie(cookie_name, session.token)
                return self._redirect("/")
            # Only names of real accounts go to the audit: a password typed into the name
            # field must not be kept.
            known = re.fullmatch(NAME_PATTERN, name) and console.accounts.get(name) is not None
            who = name if known else "(unknown name)"
            pre = self._cookie(pre_name) or ""
            if result.locked_for:
                console.refused_sign_in(who, "locked", "sign-in refused: account locked")
                minutes = max(1, round(result.locked_for / 60))
                return self._html(429, pages.signin(self._t, pre, self._t("signin.locked", minutes=minutes),
                                                    name))
            console.refused_sign_in(who, "wrong_password", "sign-in refused: wrong name or password")
            self._html(401, pages.signin(self._t, pre, self._t("signin.wrong"), name))

        def _device_test(self, session: Session, device: str) -> None:
            worker = console.runtime.device_workers().get(device)
            if worker is None:
                raise Refused(404, "error.not_found")
            try:
                health = worker.submit(lambda driver: driver.health()).result(timeout=DEVICE_TEST_TIMEOUT_S)
                ok, detail = health.ok, str(health.detail)[:200]
            except FutureTimeout:
                ok, detail = False, "timeout"
            except Exception as exc:  # noqa: BLE001 - a failing device is the answer, not a crash
                ok, detail = False, type(exc).__name__
            console.audit(session.user, "device_test", "ok" if ok else "error", device=device)
            key = "dash.test_ok" if ok else "dash.test_failed"
            session.data["flash"] = self._t(key, device=device, detail=detail)
            self._redirect("/")

        def _decide(self, session: Session, decision: str, form: dict[str, str]) -> None:
            service = console.runtime.registration_service()
            sid = form.get("id", "")
            if service is None:
                raise Refused(503, "error.restarting")
            if not re.fullmatch(r"[0-9a-f-]{36}", sid):
                raise Refused(400, "error.bad_request")
            who = f"console:{session.user}"
            try:
                if decision == "approve":
                    service.approve(sid, who)
                else:
                    service.reject(sid, who, form.get("reason", ""))
            except RegistrationError as exc:
                console.audit(session.user, decision, "error", exc.code, str(exc)[:160], registration=sid)
                raise Refused(409 if exc.code != "invalid" else 400, "error.not_awaiting") from None
            console.audit(session.user, decision, registration=sid, reason=form.get("reason"))
            session.data["flash"] = self._t("appr.done_" + decision, id=sid)
            self._redirect("/approvals")

        # --- answers ---------------------------------------------------------------------------

        def _refused(self, exc: Refused) -> None:
            self._drain()
            t = self._t
            text = t(exc.key, **exc.values)
            if self.path.startswith("/figures.json"):
                return self._json(exc.status, {"error": exc.key})
            if exc.status in (401, 403, 413, 400, 411, 415):
                text += " " + t("error.nothing_changed")
            link = "/signin" if exc.status == 401 else "/"
            self._html(exc.status, pages.message(t, t("error.title"), text, self._session, link))

    return Handler
