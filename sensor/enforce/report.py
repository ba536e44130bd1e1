"""The incident report: which resource leaked, for how long, to how many clients, how many records.

Built from the exposure ledger and the takedown registry; it is the starting point of a breach
notification, so every figure says what it counts. Client counts are distinct keyed hashes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sensor.alerts.schema import iso
from sensor.enforce.ledger import Ledger
from sensor.enforce.registry import Registry

SCOPES = ("local", "fleet")


@dataclass
class ExposureIncident:
    """One resource that alerted, tripped or was taken down: the one schema of every exposure report
    (this host's ledger, the fleet's exposure table; text, JSON, HTML, the admin API). A figure the
    source does not keep is None (the fleet table has no refusals, no per-client snapshots), never 0.
    Client counts are distinct keyed hashes (``client_hash``, the alerts' ``dlp.client.hash``)."""
    resource: str
    status: str                                     # taken down | tripped, still served | tripped | alerted
    takedown_id: int | None = None
    first_served: str | None = None                 # ISO 8601 UTC
    first_alert: str | None = None
    tripped_at: str | None = None
    taken_down_at: str | None = None
    exposed_seconds: float | None = None            # first served to taken down (else last served)
    served: int = 0                                 # responses of the resource
    completed_downloads: int = 0
    partial_responses: int | None = None
    bytes_sent: int = 0
    served_before_detection: int | None = None      # up to and including the response that tripped
    served_before_takedown: int | None = None
    unique_clients: int = 0
    unique_clients_before_detection: int | None = None
    unique_clients_before_takedown: int | None = None
    refused_after_takedown: int | None = None
    max_records_in_one_response: int = 0
    flagged_responses: int = 0                      # responses that alerted or tripped
    alerts: int | None = None
    trips: int | None = None


@dataclass
class ExposureReport:
    scope: str                                      # local (this host's ledger) | fleet (the workers' table)
    incidents: list[ExposureIncident]
    active_takedowns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report --format json``, admin ``/report``): the dataclasses' field names."""
        return asdict(self)


def build_report(ledger: Ledger, registry: Registry) -> dict[str, Any]:
    """This host's report, as the dict of :class:`ExposureReport` (what the CLI, the admin API and
    the HTML pages read)."""
    return local_report(ledger, registry).to_dict()


def local_report(ledger: Ledger, registry: Registry) -> ExposureReport:
    active = {t.resource: t for t in registry.list()}
    incidents = []
    for r in ledger.incidents():
        td = active.get(r["resource"])
        first, down = r["first_served"], r["taken_down_at"]
        incidents.append(ExposureIncident(
            resource=r["resource"],
            status="taken down" if td else ("tripped, still served" if r["tripped_at"] else "alerted"),
            takedown_id=td.id if td else None,
            first_served=iso(first) if first else None,
            first_alert=iso(r["first_alert"]) if r["first_alert"] else None,
            tripped_at=iso(r["tripped_at"]) if r["tripped_at"] else None,
            taken_down_at=iso(down) if down else None,
            exposed_seconds=round((down or r["last_served"] or 0) - first, 3) if first else None,
            served=r["served"], completed_downloads=r["completed"], partial_responses=r["partial"],
            bytes_sent=r["bytes"],
            served_before_detection=r["served_at_trip"], served_before_takedown=r["served_at_takedown"],
            unique_clients=r["clients"], unique_clients_before_detection=r["clients_at_trip"],
            unique_clients_before_takedown=r["clients_at_takedown"],
            refused_after_takedown=r["refused"], max_records_in_one_response=r["max_records"],
            flagged_responses=r["alerts"] + r["trips"], alerts=r["alerts"], trips=r["trips"]))
    return ExposureReport("local", incidents, active_takedowns=len(active))


def render_text(report: dict[str, Any]) -> str:
    """The text form of either scope's report (the dict of :class:`ExposureReport`)."""
    inc = report["incidents"]
    fleet = report.get("scope") == "fleet"
    if not inc:
        return ("Fleet: no incidents in the workers' exposure table.\n" if fleet
                else "No incidents: nothing alerted, tripped or was taken down.\n")
    head = (f"Fleet: {len(inc)} incident(s) (every sidecar, from the workers' exposure table)" if fleet
            else f"{len(inc)} incident(s), {report['active_takedowns']} active takedown(s)")
    lines = [head, ""]
    for i in inc:
        partial = "" if i["partial_responses"] is None else f", {i['partial_responses']} partial"
        lines += [
            f"== {i['resource']}  [{i['status']}]",
            f"   first served        {i['first_served'] or '-'}",
            f"   tripped             {i['tripped_at'] or '-'}",
            f"   taken down          {i['taken_down_at'] or '-'}"
            + (f"  (takedown #{i['takedown_id']})" if i["takedown_id"] else ""),
            f"   exposed for         {_n(i['exposed_seconds'])} s",
            f"   served              {i['served']:,} responses ({i['completed_downloads']:,} complete{partial}), "
            f"{i['bytes_sent']:,} bytes",
            f"   before detection    {_n(i['served_before_detection'])} responses to "
            f"{_n(i['unique_clients_before_detection'])} distinct clients",
            f"   before takedown     {_n(i['served_before_takedown'])} responses to "
            f"{_n(i['unique_clients_before_takedown'])} distinct clients",
            f"   distinct clients    {i['unique_clients']:,}",
            f"   refused afterwards  {_n(i['refused_after_takedown'])}",
            f"   records             {i['max_records_in_one_response']:,} people's records found in one response "
            "(when cut: found in what was scanned, an upper bound of what left)",
            "",
        ]
    return "\n".join(lines)


def _n(v) -> str:
    return "-" if v is None else f"{v:,}"


EVIDENCE_KEYS = ("verdict", "action", "mode", "records", "strong_records", "person_records", "findings",
                 "samples", "partial", "bytes_sent", "bytes_scanned", "trip_at_byte", "takedown_id",
                 "exchange_id", "sensor_id", "edm")


def evidence_of(alert: dict[str, Any], *, client: str | None) -> dict[str, Any]:
    """What the ledger keeps of an alert for the incident page: the ``dlp`` counts and redacted
    samples, the HTTP status and the client's keyed hash — never ``source.ip`` (raw when the operator
    chose ``source_ip: raw`` for the SOC; the page is a file that travels further)."""
    d = alert["dlp"]
    doc = {k: d.get(k) for k in EVIDENCE_KEYS}
    doc["status"] = alert.get("http", {}).get("response", {}).get("status_code")
    doc["client"] = client
    return doc


def render_rows(resource: str, rows: dict[str, list[int]]) -> str:
    """``report --rows``: one ``INDEX<TAB>ROW_ID`` line per exposed row (row ids of the protected
    table, 0-based data rows in the order the index was built from), for the notification list."""
    lines = [f"# {resource}: " + (", ".join(f"{k} {len(v)} row(s)" for k, v in rows.items()) or "no EDM rows")]
    lines += [f"{idx}\t{r}" for idx, ids in rows.items() for r in ids]
    return "\n".join(lines) + "\n"
