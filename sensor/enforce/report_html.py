"""The incident as a page: one self-contained HTML file per incident, for the ticket or the breach file.

An incident responder attaches this page instead of pasting log lines: what leaked (the resource),
the timeline (served before detection → trip → takedown → refusals → lift), how many people's
records of which kind, which clients got it (keyed hashes), redacted samples, and the exact command
that lifts the takedown.

The page must open anywhere — a mail client, an air-gapped laptop, a ticketing system's preview —
and must never phone home, so it fetches nothing: CSS inline, the timeline as inline SVG, no
scripts, fonts or images, and a Content-Security-Policy meta tag (``default-src 'none'``) that
forbids any fetch should a later edit add one. Every value is HTML-escaped: resources come from
request paths, which an attacker chooses. The page holds no raw personal value: samples are the
redacted strings the SOC alert carried (last ≤ 4 characters) with keyed fingerprints, and clients
are keyed hashes.
"""
from __future__ import annotations

import datetime as dt
import shlex
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from sensor import __version__
from sensor.alerts.schema import incident_id, iso
from sensor.enforce.ledger import Ledger
from sensor.enforce.registry import Registry, Takedown
from sensor.enforce.report import build_report

CSP = "default-src 'none'; style-src 'unsafe-inline'"

# Timeline colours; the screenshot test looks for TRIP and TAKEDOWN pixels.
COLOURS = {
    "served": "#6c757d",        # grey: first served
    "before": "#f77f00",        # orange: served before detection (a band)
    "alert": "#e9b949",         # amber: a response that alerted
    "trip": "#d62828",          # red: the trip
    "takedown": "#6a4c93",      # purple: the takedown
    "refused": "#1d70a2",       # blue: refusals after the takedown (a band)
    "lift": "#2a9d8f",          # green: lifted
}


@dataclass
class Event:
    """One point of the timeline."""
    kind: str                   # a COLOURS key
    at: float | None
    title: str
    detail: str = ""


@dataclass
class IncidentPage:
    incident_id: str
    resource: str
    html: str
    filename: str = field(init=False)

    def __post_init__(self) -> None:
        self.filename = f"incident-{self.incident_id}.html"


def incident_pages(ledger: Ledger, registry: Registry, key: bytes, *, state_dir: Path | None = None,
                   admin: str | None = None, only: str | None = None) -> list[IncidentPage]:
    """One page per incident of this host's ledger; ``only`` selects one (see :func:`matches`)."""
    report = build_report(ledger, registry)
    takedowns = registry.list(include_lifted=True)
    pages = []
    for inc in report["incidents"]:
        iid = incident_id(key, inc["resource"])
        tds = [t for t in takedowns if t.resource == inc["resource"]]
        if only is not None and not matches(only, iid, inc["resource"], tds):
            continue
        pages.append(IncidentPage(iid, inc["resource"], render_incident(
            inc, incident=iid, evidence=ledger.evidence(inc["resource"]),
            clients=ledger.clients_of(inc["resource"]), takedowns=tds, state_dir=state_dir, admin=admin)))
    return pages


def matches(ident: str, iid: str, resource: str, takedowns: list[Takedown]) -> bool:
    """``--incident`` takes the incident id (or a prefix of ≥ 8 of its digits), the resource, or a takedown number."""
    ident = ident.strip()
    if ident == resource or (len(ident) >= 8 and iid.startswith(ident.lower())):
        return True
    num = ident.lstrip("#")
    return num.isdigit() and any(t.id == int(num) for t in takedowns)


# -- rendering --------------------------------------------------------------------------------------

def _e(v: Any) -> str:
    return escape("-" if v is None else str(v), quote=True)


def _n(v: Any) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else _e(v)


def _when(ts: float | None) -> str:
    return "-" if ts is None else iso(ts)


def _ts(isotext: str | None) -> float | None:
    return None if not isotext else dt.datetime.fromisoformat(isotext.replace("Z", "+00:00")).timestamp()


def duration(seconds: float) -> str:
    """Human duration: 850 ms, 12.4 s, 5 min 3 s, 2 h 10 min, 3 d 4 h."""
    s = max(0.0, seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 172800:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def timeline(inc: dict, evidence: list[tuple[float, dict]], takedowns: list[Takedown]) -> list[Event]:
    """The incident's events in time order (bands for the counts the ledger keeps without times)."""
    first, tripped, down = _ts(inc["first_served"]), _ts(inc["tripped_at"]), _ts(inc["taken_down_at"])
    ev: list[Event] = []
    if first is not None:
        ev.append(Event("served", first, "first requested"))
    if inc["served_before_detection"] is not None:
        ev.append(Event("before", first, f"{inc['served_before_detection']:,} served before detection",
                        f"to {_n(inc['unique_clients_before_detection'])} distinct clients"))
    for at, doc in evidence:
        if tripped is not None and at >= tripped - 0.001:
            break                               # responses from the trip on: the trip node and the table
        if doc.get("verdict") == "alert":
            ev.append(Event("alert", at, "alert", f"{_n(doc.get('records'))} records, HTTP {_n(doc.get('status'))}"))
    if tripped is not None:
        # the ledger marks the trip when the response is accounted for; the sensor's own takedown
        # was made at the decision, a little earlier: the earlier of the two is when it tripped
        own = [t.created for t in takedowns if t.actor.startswith("sensor:")]
        tripped = min([tripped, *own])
        worst = max((d.get("records") or 0 for _, d in evidence), default=inc["max_records_in_one_response"])
        ev.append(Event("trip", tripped, "trip", f"{worst:,} people's records in one response"))
    for t in sorted(takedowns, key=lambda t: t.created):
        ev.append(Event("takedown", t.created, f"takedown #{t.id}", f"by {t.actor}: {t.reason}"))
    if down is not None or takedowns:
        ev.append(Event("refused", None, f"{inc['refused_after_takedown']:,} refused (451)", "after the takedown"))
    for t in takedowns:
        if t.lifted:
            ev.append(Event("lift", t.lifted, f"lifted #{t.id}", f"by {t.lifted_by}: {t.lift_reason}"))
    return ev


def _svg(events: list[Event], origin: float | None) -> str:
    """The timeline strip: evenly spaced nodes (not to scale: a trip and its takedown are
    milliseconds apart), bands for 'served before detection' and 'refused', times above."""
    n = len(events)
    if not n:
        return ""
    w, y = 1000, 64
    xs = [500.0] if n == 1 else [60 + i * (880 / (n - 1)) for i in range(n)]
    parts = [f'<svg class="strip" viewBox="0 0 {w} 130" role="img" aria-label="incident timeline" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{xs[0]:.0f}" y1="{y}" x2="{xs[-1]:.0f}" y2="{y}" stroke="#adb5bd" stroke-width="4"/>']
    for i, e in enumerate(events):              # bands: "before" runs to the next node, "refused" from the last
        span = (i, i + 1) if e.kind == "before" else (i - 1, i) if e.kind == "refused" else None
        if span and 0 <= span[0] and span[1] < n:
            parts.append(f'<line x1="{xs[span[0]]:.0f}" y1="{y}" x2="{xs[span[1]]:.0f}" y2="{y}" '
                         f'stroke="{COLOURS[e.kind]}" stroke-width="18" stroke-linecap="round"/>')
    for x, e in zip(xs, events):
        r = 22 if e.kind in ("trip", "takedown") else 15
        parts.append(f'<circle cx="{x:.0f}" cy="{y}" r="{r}" fill="{COLOURS[e.kind]}" stroke="#fff" stroke-width="3"/>')
        if e.at is not None and origin is not None:
            parts.append(f'<text x="{x:.0f}" y="24" text-anchor="middle" class="t">+{_e(duration(e.at - origin))}</text>')
        parts.append(f'<text x="{x:.0f}" y="112" text-anchor="middle" class="l">{_e(_short(e.title))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(title: str, limit: int = 28) -> str:
    return title if len(title) <= limit else title[:limit - 1] + "…"


def _table(head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def render_incident(inc: dict, *, incident: str, evidence: list[tuple[float, dict]],
                    clients: list[tuple[str, float]], takedowns: list[Takedown],
                    state_dir: Path | None = None, admin: str | None = None, now: float | None = None) -> str:
    """The page (a complete HTML document) for one incident of :func:`build_report`."""
    events = timeline(inc, evidence, takedowns)
    origin = next((e.at for e in events if e.at is not None), None)
    tripped = _ts(inc["tripped_at"])
    worst = max(evidence, key=lambda r: (r[1].get("records") or 0, r[1].get("verdict") == "trip"), default=None)
    wd = worst[1] if worst else {}

    steps = "".join(
        f'<li><span class="dot" style="background:{COLOURS[e.kind]}"></span>'
        f'<b>{_e(e.title)}</b> <span class="muted">{_e(_when(e.at)) if e.at is not None else ""}</span>'
        + (f"<br>{_e(e.detail)}" if e.detail else "") + "</li>" for e in events)

    summary = [
        ("Resource", _e(inc["resource"])), ("Status", _e(inc["status"])),
        ("First served", _e(inc["first_served"])), ("First alert", _e(inc["first_alert"])),
        ("Tripped", _e(inc["tripped_at"])), ("Taken down", _e(inc["taken_down_at"])),
        ("Exposed for", _e(duration(inc["exposed_seconds"])) if inc["exposed_seconds"] is not None else "-"),
        ("Served", f"{_n(inc['served'])} responses ({_n(inc['completed_downloads'])} complete, "
                   f"{_n(inc['partial_responses'])} partial), {_n(inc['bytes_sent'])} bytes"),
        ("Before detection", f"{_n(inc['served_before_detection'])} responses to "
                             f"{_n(inc['unique_clients_before_detection'])} distinct clients"),
        ("Before takedown", f"{_n(inc['served_before_takedown'])} responses to "
                            f"{_n(inc['unique_clients_before_takedown'])} distinct clients"),
        ("Refused afterwards", _n(inc["refused_after_takedown"])),
        ("Distinct clients", f"{_n(inc['unique_clients'])} (responses that carried person records)"),
        ("Alerts / trips", f"{_n(inc['alerts'])} / {_n(inc['trips'])}"),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in summary)

    people = [("Records (people) in the worst response", wd.get("records", inc["max_records_in_one_response"])),
              ("with a strong identifier (SSN, licence, card…)", wd.get("strong_records")),
              ("with a name and a date of birth or address", wd.get("person_records"))]
    people_dl = "".join(f"<dt>{_e(k)}</dt><dd>{_n(v)}</dd>" for k, v in people)
    by_sig: dict[str, int] = {}
    for _, d in evidence:
        for sig, cnt in (d.get("findings") or {}).items():
            by_sig[sig] = max(by_sig.get(sig, 0), int(cnt))
    sig_rows = [[f"<code>{_e(s)}</code>", _n((wd.get("findings") or {}).get(s, 0)), _n(c)]
                for s, c in sorted(by_sig.items(), key=lambda kv: -kv[1])]

    resp_rows = [[_e(iso(at)), f'<span class="v {_e(d.get("verdict"))}">{_e(d.get("verdict"))}</span>',
                  _e(d.get("action")), _n(d.get("status")), _n(d.get("records")), _n(d.get("bytes_sent")),
                  "yes" if d.get("partial") else "no", f"<code>{_e(d.get('client'))}</code>"]
                 for at, d in evidence]

    client_rows = [[f"<code>{_e(c)}</code>", _e(iso(t)),
                    "before detection" if tripped is not None and t < tripped else
                    ("after detection" if tripped is not None else "-")] for c, t in clients]

    sample_rows = [[f"<code>{_e(sig)}</code>", f"<code>{_e(s.get('redacted'))}</code>",
                    f"<code>{_e(s.get('fingerprint'))}</code>"]
                   for sig, ss in sorted((wd.get("samples") or {}).items()) for s in ss]

    td_rows = [[f"#{t.id}", _e(iso(t.created)), _e(t.actor), _e(t.reason),
                _e(f"lifted {iso(t.lifted)} by {t.lifted_by}: {t.lift_reason}") if t.lifted else "<b>active</b>"]
               for t in takedowns]
    active = [t for t in takedowns if not t.lifted]
    sd = f" --state-dir {shlex.quote(str(state_dir))}" if state_dir else ""
    lift = ""
    for t in active:
        cli = f'dlp-sensor takedowns lift {t.id} --reason "<why it is safe now>" --actor "<your name>"{sd}'
        lift += (f"<p>Lift takedown #{t.id} on this host (and, with Kafka configured, on every sidecar of the "
                 f"fleet) — reason and actor are required and audited:</p><pre>{_e(cli)}</pre>")
        if admin:
            token = f"{shlex.quote(str(state_dir))}/admin.token" if state_dir else "admin.token"
            api = (f'curl -X POST -H "Authorization: Bearer $(cat {token})" '
                   f"-d '{{\"reason\": \"<why>\", \"actor\": \"<you>\"}}' http://{admin}/takedowns/{t.id}/lift")
            lift += f"<p>or through the admin API of the running sidecar:</p><pre>{_e(api)}</pre>"
    if not active:
        add = f'dlp-sensor takedowns add {shlex.quote(inc["resource"])} --reason "<why>"{sd}'
        lift = '<p class="muted">No active takedown for this resource.</p>' + (
            f"<p>Take it down with:</p><pre>{_e(add)}</pre>" if not takedowns else "")

    generated = iso(now) if now is not None else iso(dt.datetime.now(dt.timezone.utc).timestamp())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Incident {_e(incident[:12])}: {_e(inc["resource"])}</title>
<style>{_CSS}</style></head>
<body>
<header><h1>Personal-data incident <code>{_e(incident)}</code></h1>
<p class="res">{_e(inc["resource"])} <span class="badge">{_e(inc["status"])}</span></p></header>
<section><h2>Summary</h2><dl>{dl}</dl></section>
<section><h2>Timeline</h2>{_svg(events, origin)}
<p class="muted">Nodes in order, not to scale; times above are from the first response served.</p>
<ol class="steps">{steps}</ol></section>
<section><h2>People and records</h2><dl>{people_dl}</dl>
<h3>By signature (distinct values)</h3>
{_table(["signature", "in the worst response", "most in one response"], sig_rows, "No findings recorded.")}</section>
<section><h2>Responses that alerted or tripped</h2>
{_table(["time", "verdict", "action", "HTTP", "records", "bytes sent", "partial", "client (keyed hash)"],
        resp_rows, "None recorded.")}</section>
<section><h2>Distinct clients</h2>
<p class="muted">Keyed hashes (HMAC-SHA256 under this deployment's key) of the clients of responses that carried
person records, kept for the ledger's retention period; the count above survives their pruning.</p>
{_table(["client (keyed hash)", "first seen", ""], client_rows, "No client hashes kept.")}</section>
<section><h2>Redacted samples</h2>
<p class="muted">At most the last 4 characters of a value; the fingerprint is a keyed hash for correlation.</p>
{_table(["signature", "redacted", "fingerprint"], sample_rows, "No samples recorded.")}</section>
<section><h2>Takedown</h2>
{_table(["#", "since", "by", "reason", "state"], td_rows, "This resource was not taken down.")}
{lift}</section>
<footer>Generated {_e(generated)} by dlp-sensor {_e(__version__)}. This page carries no raw personal value and
loads nothing from the network.</footer>
</body></html>
"""


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#212529;margin:0 auto;
max-width:1080px;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;border-bottom:2px solid #dee2e6;padding-bottom:4px;
margin-top:28px}h3{font-size:15px}
code,pre{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;font-size:13px}
pre{background:#f1f3f5;padding:10px;white-space:pre-wrap;word-break:break-all;border-radius:4px}
.res{font-size:16px;word-break:break-all}.badge{background:#d62828;color:#fff;border-radius:10px;
padding:2px 10px;font-size:13px;margin-left:8px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px}dt{color:#495057}dd{margin:0}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{border-bottom:1px solid #dee2e6;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#f8f9fa}
.strip{width:100%;height:auto;display:block}.strip .t{font-size:14px;fill:#495057}
.strip .l{font-size:15px;fill:#212529}
.steps{list-style:none;padding:0}.steps li{margin:6px 0}.dot{display:inline-block;width:12px;height:12px;
border-radius:6px;margin-right:8px}
.muted{color:#6c757d;font-size:13px}.v.trip{color:#d62828;font-weight:bold}.v.alert{color:#b07d00}
footer{margin-top:32px;color:#6c757d;font-size:12px}
"""
