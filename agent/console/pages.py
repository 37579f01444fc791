"""The console's pages: server-rendered HTML, every text from the catalogue (i18n.py), every
value escaped. No inline script or style (the Content-Security-Policy forbids both): the
look is static/console.css, the dashboard's live figures static/console.js."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from agent.console.figures import human_age, human_bytes
from agent.console.i18n import LANGUAGES, Translator
from agent.console.sessions import Session
from agent.registration.approval import REJECT_REASONS


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _csrf(session: Session | None, pre: str | None = None) -> str:
    token = session.csrf if session else pre
    return f'<input type="hidden" name="csrf" value="{_e(token)}">'


def layout(t: Translator, title: str, body: str, session: Session | None, active: str = "",
           flash: str = "", script: bool = False) -> str:
    nav = ""
    if session is not None:
        links = [("dashboard", "/"), ("registrations", "/registrations")]
        if session.role == "supervisor":
            links.append(("approvals", "/approvals"))
        items = "".join(
            f'<a href="{href}"{" class=active aria-current=page" if key == active else ""}>'
            f'{_e(t("nav." + key))}</a>' for key, href in links)
        languages = "".join(
            f'<button name="language" value="{code}"{" disabled" if code == t.language else ""}>'
            f'{_e(name)}</button>' for code, (name, _) in LANGUAGES.items())
        nav = (f'<nav>{items}</nav><div class="who"><span>{_e(session.user)} · '
               f'{_e(t("role." + session.role))}</span>'
               f'<form method="post" action="/language" class="inline">{_csrf(session)}{languages}</form>'
               f'<form method="post" action="/signout" class="inline">{_csrf(session)}'
               f'<button class="quiet">{_e(t("nav.signout"))}</button></form></div>')
    flash_html = f'<p class="flash" role="status">{_e(flash)}</p>' if flash else ""
    js = '<script src="/static/console.js" defer></script>' if script else ""
    return (f'<!doctype html><html lang="{t.language}" dir="{t.direction}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)} · {_e(t("app.name"))}</title>'
            f'<link rel="stylesheet" href="/static/console.css">{js}</head>'
            f'<body><header><strong>{_e(t("app.name"))}</strong>{nav}</header>'
            f'<main>{flash_html}{body}</main></body></html>')


def signin(t: Translator, pre: str, message: str = "", name: str = "") -> str:
    languages = " · ".join(f'<a href="/signin?lang={code}">{_e(n)}</a>' for code, (n, _) in LANGUAGES.items())
    error = f'<p class="error" role="alert">{_e(message)}</p>' if message else ""
    body = (f'<section class="card signin"><h1>{_e(t("signin.title"))}</h1>{error}'
            f'<form method="post" action="/signin">{_csrf(None, pre)}'
            f'<input type="hidden" name="language" value="{t.language}">'
            f'<label>{_e(t("signin.name"))}<input name="name" value="{_e(name)}" autocomplete="username" '
            f'autocapitalize="none" required maxlength="32"></label>'
            f'<label>{_e(t("signin.password"))}<input name="password" type="password" '
            f'autocomplete="current-password" required maxlength="256"></label>'
            f'<button>{_e(t("signin.submit"))}</button></form><p class="languages">{languages}</p></section>')
    return layout(t, t("signin.title"), body, None)


def message(t: Translator, title: str, text: str, session: Session | None, link: str = "/") -> str:
    body = (f'<section class="card"><h1>{_e(title)}</h1><p>{_e(text)}</p>'
            f'<p><a href="{_e(link)}">{_e(t("message.continue"))}</a></p></section>')
    return layout(t, title, body, session)


def _figure(t: Translator, key: str, value: str, label: str | None = None) -> str:
    return (f'<div class="figure"><span class="label">{_e(label or t("dash." + key))}</span>'
            f'<span class="value" data-figure="{key}">{_e(value)}</span></div>')


def figure_texts(t: Translator, f: dict[str, Any]) -> dict[str, str]:
    """The dashboard's figures as shown; the live refresh (figures.json) sends the same."""
    connected = t("dash.online") if f["connected"] else t("dash.offline")
    return {
        "connection": connected,
        "connected_since": f["connected_since"] or "—",
        "backlog_captures": str(f["backlog_captures"]),
        "backlog_bytes": human_bytes(f["backlog_bytes"]),
        "backlog_oldest": human_age(f["backlog_oldest_s"]),
        "held": str(f["held"]),
        "awaiting_approval": str(f["awaiting_approval"]),
        "last_receipt": f["last_receipt"] or t("dash.none_yet"),
        "disk_free": human_bytes(f["disk_free_bytes"]),
        "registrations_left": str(f["registrations_left"]),
        "clock_utc": f["clock_utc"],
        "clock_state": t("dash.clock_" + f["clock"]["state"]),
        "clock_source": t("clock.source." + f["clock"]["source"]),
        "clock_reason": clock_reason(t, f["clock"]),
        **{f"device.{d['name']}": t("device." + d["state"]) for d in f["devices"]},
    }


def translated(make: Callable[[], str], english: str) -> str:
    """A sentence in the console's language, or the agent's English when a catalogue's
    placeholders do not fit the values (a page must not fail over a translation)."""
    try:
        return make()
    except (KeyError, IndexError, ValueError, TypeError):
        return english


def clock_reason(t: Translator, clock: dict[str, Any]) -> str:
    """Why the clock is not trusted, in the console's language."""
    if not clock.get("reason_texts"):
        return str(clock["reason"])
    return translated(lambda: t.join(clock["reason_texts"]), clock["reason"])


def refusal(t: Translator, r: dict[str, Any], part: str) -> str:
    """A blocking rule's ``message`` or ``action`` in the console's language."""
    key = f'refusal.{r.get("text")}.{part}'
    if not r.get("text") or not t.has(key):
        return r[part]
    return translated(lambda: t.message(key, r.get("values") or {}), r[part])


def rules(t: Translator, blocked: list[dict[str, Any]]) -> str:
    if not blocked:
        return ""
    items = "".join(
        f'<li><strong>{_e(t("rule." + r["rule"]) if t.has("rule." + r["rule"]) else r["rule"])}</strong>'
        f'<span>{_e(refusal(t, r, "message"))}</span>'
        f'<span class="action">{_e(t("rule.do"))}: {_e(refusal(t, r, "action"))}</span></li>'
        for r in blocked)
    return (f'<section class="card blocked" role="alert"><h2>{_e(t("rule.title"))}</h2>'
            f'<ul>{items}</ul></section>')


def dashboard(t: Translator, f: dict[str, Any], session: Session, flash: str = "") -> str:
    v = figure_texts(t, f)
    state_class = "ok" if f["connected"] else "warn"
    devices = "".join(
        f'<li><span>{_e(d["name"])} <small>{_e(d["driver"])}</small></span>'
        f'<span data-figure="device.{_e(d["name"])}">{_e(v["device." + d["name"]])}</span>'
        f'<form method="post" action="/devices/test" class="inline">{_csrf(session)}'
        f'<button name="device" value="{_e(d["name"])}">{_e(t("dash.test"))}</button></form></li>'
        for d in f["devices"]) or f"<li>{_e(t('dash.no_devices'))}</li>"
    body = (
        f'{rules(t, f["blocked"])}'
        f'<section class="card kiosk"><h1>{_e(f["kiosk_id"])}</h1><p>{_e(f["site"])}</p>'
        f'<p class="{state_class}" data-figure="connection">{_e(v["connection"])}</p>'
        f'{_figure(t, "connected_since", v["connected_since"])}'
        f'{_figure(t, "last_receipt", v["last_receipt"])}</section>'
        f'<section class="card"><h2>{_e(t("dash.backlog"))}</h2>'
        f'{_figure(t, "backlog_captures", v["backlog_captures"])}'
        f'{_figure(t, "backlog_bytes", v["backlog_bytes"])}'
        f'{_figure(t, "backlog_oldest", v["backlog_oldest"])}'
        f'{_figure(t, "held", v["held"])}{_figure(t, "awaiting_approval", v["awaiting_approval"])}</section>'
        f'<section class="card"><h2>{_e(t("dash.disk"))}</h2>'
        f'{_figure(t, "disk_free", v["disk_free"])}'
        f'{_figure(t, "registrations_left", v["registrations_left"])}'
        f'<h2>{_e(t("dash.clock"))}</h2>{_figure(t, "clock_utc", v["clock_utc"])}'
        f'{_figure(t, "clock_state", v["clock_state"])}{_figure(t, "clock_source", v["clock_source"])}'
        f'<p class="detail" data-figure="clock_reason">{_e(v["clock_reason"])}</p>'
        f'<p class="version">{_e(t("dash.version"))} {_e(f["version"])}</p></section>'
        f'<section class="card"><h2>{_e(t("dash.devices"))}</h2><ul class="devices">{devices}</ul></section>')
    return layout(t, t("nav.dashboard"), f'<div class="grid">{body}</div>', session, "dashboard",
                  flash, script=True)


def _items(t: Translator, items: list[dict[str, Any]]) -> str:
    cells = []
    for i in items:
        quality = "—" if i["quality"] is None else str(i["quality"])
        flag = f' <span class="warn">{_e(t("reg.force"))}</span>' if i["force_captured"] else ""
        cells.append(f'<span class="item {i["status"]}">{_e(i["key"])}: {_e(quality)}{flag}</span>')
    return f'<div class="items">{"".join(cells)}</div>'


def registrations(t: Translator, rows: list[dict[str, Any]], query: str, session: Session) -> str:
    supervisor = session.role == "supervisor"
    head = (f'<th>{_e(t("reg.id"))}</th><th>{_e(t("reg.started"))}</th><th>{_e(t("reg.state"))}</th>'
            + (f'<th>{_e(t("reg.applicant"))}</th>' if supervisor else ""))
    lines = []
    for r in rows:
        missing = (f' <small>{_e(t("reg.missing"))}: {_e(", ".join(r["missing"]))}</small>'
                   if r["missing"] else "")
        applicant = f'<td>{_e(r["applicant_ref"])}</td>' if supervisor else ""
        lines.append(f'<tr><td class="id">{_e(r["id"])}</td><td>{_e(r["created_at"])}</td>'
                     f'<td><span class="state {r["status"]}">{_e(t("status." + r["status"]))}</span>'
                     f'{missing}</td>'
                     f'{applicant}</tr>')
    table = (f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>' if lines
             else f'<p>{_e(t("reg.none"))}</p>')
    body = (f'<section class="card wide"><h1>{_e(t("nav.registrations"))}</h1>'
            f'<form method="get" action="/registrations" class="search"><label>{_e(t("reg.search"))}'
            f'<input name="q" value="{_e(query)}" maxlength="64"></label><button>{_e(t("reg.find"))}</button>'
            f'</form>{table}</section>')
    return layout(t, t("nav.registrations"), body, session, "registrations")


def approvals(t: Translator, rows: list[dict[str, Any]], session: Session, flash: str = "") -> str:
    cards = []
    reasons = "".join(f'<option value="{r}">{_e(t("reject." + r))}</option>' for r in REJECT_REASONS)
    for r in rows:
        exceptions = " · ".join(f'{_e(e["finger"])}: {_e(e["code"])} ({_e(e["reason"])})'
                                for e in r["exceptions"])
        cards.append(
            f'<section class="card approval"><h2 class="id">{_e(r["id"])}</h2>'
            f'<p>{_e(t("appr.applicant"))}: <strong>{_e(r["applicant_ref"])}</strong> · '
            f'{_e(t("appr.operator"))}: {_e(r["operator_id"])} · '
            f'{_e(t("appr.since"))} <bdi>{_e(r["since"])}</bdi></p>'
            f'{_items(t, r["items"])}'
            + (f'<p class="exceptions"><strong>{_e(t("appr.exceptions"))}:</strong> {exceptions}</p>'
               if exceptions else "")
            + f'<div class="actions"><form method="post" action="/approvals/approve" class="inline">'
            f'{_csrf(session)}<input type="hidden" name="id" value="{_e(r["id"])}">'
            f'<button class="approve">{_e(t("appr.approve"))}</button></form>'
            f'<form method="post" action="/approvals/reject" class="inline">{_csrf(session)}'
            f'<input type="hidden" name="id" value="{_e(r["id"])}"><select name="reason" '
            f'aria-label="{_e(t("appr.reason"))}">{reasons}</select>'
            f'<button class="reject">{_e(t("appr.reject"))}</button></form></div></section>')
    body = (f'<h1>{_e(t("nav.approvals"))}</h1>'
            + ("".join(cards) or f'<section class="card"><p>{_e(t("appr.none"))}</p></section>'))
    return layout(t, t("nav.approvals"), body, session, "approvals", flash)
