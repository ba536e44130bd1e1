"""One sensor process's shared state: engine + policy (reloadable), key, registry, ledger, alerts, metrics.

Taps are thin: each exchange is an :class:`~sensor.exchange.session.ExchangeSession`, which calls
:meth:`Sensor.new_scan`, :meth:`Sensor.take_down` (on a trip, before the refusal or cut) and
:meth:`Sensor.finished` (always, once). Everything a verdict causes — takedown, ledger, SOC alert,
metrics — happens here, once, the same way for every tap.
"""
from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import hashlib
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from sensor.alerts.dispatch import Dispatcher
from sensor.alerts.schema import AlertContext, build_alert, incident_id
from sensor.alerts.sinks import make_sink
from sensor.alerts.spool import TRIP_HOLD, Spool
from sensor.alerts.unscanned import UnscannedAlerts
from sensor.config import Config
from sensor.config_reload import FileStamp, file_stamps
from sensor.decode.limits import DecodeLimits
from sensor.detect.core import core_for
from sensor.detect.engine import Engine
from sensor.detect.keys import content_fingerprint, load_key
from sensor.detect.pack import PackError, load_pack
from sensor.detect.policy import Policy, PolicyError, load_policy, parse_policy
from sensor.detect.scanner import ScanResult
from sensor.enforce.ledger import Ledger
from sensor.exchange.admission import Admission
from sensor.exchange.ranges import CleanVerdicts
from sensor.exchange.routes import route_for
from sensor.enforce.report import evidence_of
from sensor.enforce.registry import DISK_ERRORS, Registry, Takedown, TakedownNotDurable
from sensor.enforce.statefiles import MIN_SECRET_BYTES, StateError, load_or_create_secret, private_dir, private_file
from sensor.exchange.identity import client_hash
from sensor.metrics import Metrics
from sensor.pipeline import BodyScan, Exchange

log = logging.getLogger("dlp_sensor")
DEFAULT_BLOCK_PAGE = (b"<!doctype html><html><head><title>451 Unavailable For Legal Reasons</title></head>"
                      b"<body><h1>Unavailable</h1><p>This resource has been withdrawn because it appears to "
                      b"contain personal data. The site's operators have been notified.</p></body></html>\n")

TOKEN_ENV = "DLP_SENSOR_ADMIN_TOKEN"
NOT_DURABLE_NOTE = ("takedown-not-durable: the disk refused the takedown's commit; the resource is refused "
                    "from memory and the commit is retried until it lands (a stop before then loses it)")

COMMITTED_LIMIT = 10_000       # trips in flight remembered for finished() (oldest forgotten first)
COUNTS_UNKNOWN_NOTE = ("counts-unknown: the tap gave no scan result at the trip; the counts come when the "
                       "exchange ends, if before delivery")


def _at_trip(result: ScanResult | None) -> ScanResult:
    """The result the trip's alert is built from: the tap's, or a bare trip when it gave none."""
    if result is None:
        return ScanResult(verdict="trip", notes=[COUNTS_UNKNOWN_NOTE])
    if result.verdict == "trip":
        return result
    return dataclasses.replace(result, verdict="trip", notes=list(result.notes))


@dataclass
class Detector:
    """What a reload swaps as one unit; an exchange keeps the one it started with."""
    engine: Engine
    policy: Policy
    generation: str                 # changes whenever the pack or the policy does (ICAP ISTag)


def _policy_from(config: Config, known: set[str]) -> Policy:
    if isinstance(config.policy, dict):
        return parse_policy(config.policy, "policy", known)
    return load_policy(Path(config.policy) if config.policy else None, known)


def build_detector(config: Config) -> Detector:
    """Load pack and policy; raises PackError / PolicyError naming the file and key."""
    pack = load_pack([Path(p) for p in config.signatures], include_default=config.default_signatures)
    engine = Engine(pack)
    known = {s.id for s in engine.signatures}
    policy = _policy_from(config, known)
    for i, r in enumerate(config.proxy.routes):         # the route table's own allow lists
        if unknown := sorted(r.allow - known):
            raise PolicyError(f"proxy.routes[{i}].allow: unknown signature id(s) {unknown}")
    gen = hashlib.sha256((pack.digest + repr(policy) + repr(config.proxy.routes)).encode()).hexdigest()[:16]
    # the compiled core now (~0.7 s), not in the first exchange's scanner: that runs on the event loop
    # and stalled every other client for as long (bench/latency.py's first rounds); a reload builds
    # its detector in a thread
    core_for(engine)
    return Detector(engine, policy, gen)


def admin_token(config: Config) -> str:
    """Token from config, else $DLP_SENSOR_ADMIN_TOKEN, else generated once into the state dir.

    Never empty and never shorter than 16 characters: the stored token is written atomically (0600,
    fsynced) and a shorter or non-ASCII one (a 0-byte file left by a full disk) stops the start with
    StateError naming the file, as does one another user owns or may write."""
    if config.admin_token:
        return config.admin_token
    env = os.environ.get(TOKEN_ENV, "").strip(" \t\r\n")
    if env:
        if len(env) < MIN_SECRET_BYTES or not all(0x21 <= ord(c) <= 0x7E for c in env):
            raise StateError(f"${TOKEN_ENV}: must be at least {MIN_SECRET_BYTES} printable ASCII characters")
        return env
    assert config.state_dir is not None
    return load_or_create_secret(config.state_dir / "admin.token", "admin token", lambda: secrets.token_urlsafe(32),
                                 "remove the file to generate a new token")


class Sensor:
    def __init__(self, config: Config, detector: Detector | None = None):
        assert config.state_dir is not None, "with_overrides() fills state_dir"
        self.config = config
        sd = private_dir(config.state_dir)          # 0700; refused if another user owns or may write it
        self.key = load_key(config.hmac_key, sd)
        self.token = admin_token(config)
        self.detector = detector or build_detector(config)
        from sensor.edm.match import load_indexes
        self.edm = load_indexes(getattr(config, "indexes", None) or [], self.key)   # IndexFileError names a bad file
        self._flag_indexes = self._indexes_from_flags(config)
        self.metrics = Metrics()
        empty = config.start_empty
        self.registry = Registry(sd / "takedowns.db", start_empty=empty)
        self.ledger = Ledger(sd / "ledger.db", client_retention_days=config.client_retention_days, start_empty=empty)
        self.spool = Spool(sd / "alerts.db", start_empty=empty)
        self.dispatcher = Dispatcher(self.spool, self._sinks(config), retry_initial=config.retry_initial,
                                     retry_max=config.retry_max, metrics=self.metrics)
        self._committed: dict[str, str] = {}       # exchange id -> dedup id of the alert take_down spooled
        self.unscanned = UnscannedAlerts(self)
        self.limits = DecodeLimits()
        self.admission = Admission()                # scans in flight, shared by every tap of this process
        self.clean = CleanVerdicts()                # full bodies scanned clean: their ranges may be served
        self.ready = False
        self._tasks: list[asyncio.Task] = []
        self._watched: dict[str, FileStamp] = {}
        self.metrics.takedowns_active.set_function(lambda: self.registry.active)
        self.fleet = None                   # sensor.stream.fleet.FleetLink when kafka.bootstrap is set
        self.mirror = None                  # sensor.stream.mirror.Mirror when kafka.mirror is on

    @staticmethod
    def _sinks(config: Config) -> list:
        """The alert sinks of ``config`` (ValueError names the key of a bad one)."""
        assert config.state_dir is not None
        sinks = []
        for i, s in enumerate(config.sinks):
            raw = dict(s)
            if raw.get("type") == "jsonl" and not os.path.isabs(raw.get("path", "/")):
                raw["path"] = str(config.state_dir / raw["path"])
                private_file(Path(raw["path"]))     # created 0600 before the sink first appends
            sinks.append(make_sink(raw, f"alerts.sinks[{i}]"))
        return sinks

    # -- life cycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        k = self.config.kafka
        if k.bootstrap and k.fleet:
            from sensor.stream.fleet import FleetLink
            self.fleet = FleetLink(self)
            self.registry.on_change = self.fleet.wake.set
            await self.fleet.start()                # replay the fleet's takedowns before serving
        if k.bootstrap and k.mirror:
            from sensor.stream.mirror import Mirror
            self.mirror = Mirror(self)
            await self.mirror.start()
        await self.dispatcher.start()
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="ledger-flush"))
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="config-watch"))
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        except (NotImplementedError, RuntimeError, ValueError):
            pass                                    # not the main thread (tests run sensors in-process)
        self._watched = self._mtimes()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.unscanned.close()                      # the pending window's count goes out now
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dispatcher.stop()
        for link in (self.mirror, self.fleet):
            if link is not None:
                await link.stop()
        self.ledger.close()
        self.registry.close()
        self.spool.close()

    async def _flush_loop(self) -> None:
        """Ledger deltas to disk every half second, at once after a trip or takedown mark."""
        wake = asyncio.Event()
        self.ledger.on_mark = wake.set
        next_prune = 0.0
        while True:
            try:                                    # not wait_for: on 3.11 it can swallow stop()'s cancel
                async with asyncio.timeout(0.5):
                    await wake.wait()
            except TimeoutError:
                pass
            wake.clear()
            try:
                await self.ledger.flush_async()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 3600
                    if n := await self.ledger.disk(self.ledger.prune):
                        log.info("ledger: forgot %d client hashes older than %g days", n,
                                 self.config.client_retention_days)
            except Exception:                       # a full disk must not stop the proxy
                log.exception("ledger flush failed; will retry")

    # -- reload -----------------------------------------------------------------------------------
    def _watch_files(self) -> list[Path]:
        files = [p for p in ([self.config.path] if self.config.path else [])]
        if isinstance(self.config.policy, str):
            files.append(Path(self.config.policy))
        for s in self.config.signatures:
            p = Path(s)
            files.extend(sorted(p.glob("*.y*ml")) if p.is_dir() else [p])
        files.extend(Path(i.path) for i in getattr(self.config, "indexes", None) or [])
        return files

    def _mtimes(self) -> dict[str, FileStamp]:
        return file_stamps(self._watch_files())

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self._mtimes()
            if now != self._watched:
                self._watched = now
                await self.reload()

    @staticmethod
    def _indexes_from_flags(config: Config) -> list:
        """The ``--index`` entries (appended after the file's by with_overrides), kept across reloads."""
        have = list(getattr(config, "indexes", None) or [])
        if not have or not config.path:
            return have if not config.path else []
        from sensor.config import ConfigError, load_config
        try:
            in_file = list(getattr(load_config(config.path), "indexes", None) or [])
        except ConfigError:
            return []
        return have[len(in_file):]

    async def reload(self) -> bool:
        """Re-read the configuration and apply all of it, or none of it (see sensor.config_reload):
        a key that needs a restart, a bad file, pack, policy, index or sink is refused with one log
        line and the running configuration keeps serving. Pack and policy compile off the event loop."""
        from sensor import config_reload
        config = self.config
        if config.path:
            from sensor.config import ConfigError
            try:
                config = config_reload.reread(self.config, self._flag_indexes)
            except ConfigError as e:
                return self._reload_refused("error", str(e))
            if restart := config_reload.restart_keys(self.config, config):
                for key in restart:
                    self.metrics.reload_restart_keys.labels(key=config_reload.metric_key(key)).inc()
                return self._reload_refused("restart_required", f"{', '.join(restart)} changed, which needs a "
                                            "restart (nothing of this reload is applied)")
        from sensor.edm.match import load_indexes
        try:
            det = await asyncio.to_thread(build_detector, config)
            edm = await asyncio.to_thread(load_indexes, getattr(config, "indexes", None) or [], self.key)
            sinks = self._sinks(config) if self._sinks_changed(config) else None
            token = admin_token(config) if config.admin_token != self.config.admin_token else self.token
        except (PackError, PolicyError, StateError, OSError, ValueError) as e:
            return self._reload_refused("error", str(e))
        # one assignment each: a scan in flight keeps the index set it started with (mmap freed with it)
        self.config, self.detector, self.edm, self.token = config, det, edm, token
        self.ledger.client_retention = config.client_retention_days * 86400.0
        if sinks is not None:
            await self.dispatcher.replace_sinks(sinks, retry_initial=config.retry_initial,
                                                retry_max=config.retry_max)
            self.metrics.expect(sinks=[s.name for s in sinks])
        self._watched = self._mtimes()
        self.metrics.reloads.labels(result="ok").inc()
        log.info("reloaded: generation %s, %d signatures", det.generation, len(det.engine.signatures))
        return True

    def _reload_refused(self, result: str, why: str) -> bool:
        log.error("reload refused, still serving generation %s: %s", self.detector.generation, why)
        self.metrics.reloads.labels(result=result).inc()
        return False

    def _sinks_changed(self, config: Config) -> bool:
        c = self.config
        return (config.sinks, config.retry_initial, config.retry_max) != (c.sinks, c.retry_initial, c.retry_max)

    # -- per exchange -----------------------------------------------------------------------------
    def new_scan(self, exchange: Exchange, *, stop_on_trip: bool = True, detector: Detector | None = None,
                 policy: Policy | None = None) -> BodyScan:
        """A body's scan with ``detector`` (the one the exchange started with; default: the current
        one) and ``policy`` (the route's, already resolved for the path; default: the detector's)."""
        d = detector or self.detector
        return BodyScan(d.engine, policy or d.policy, key=self.key, exchange=exchange, limits=self.limits,
                        stop_on_trip=stop_on_trip, edm=self.edm)

    def block_page(self) -> bytes:
        """The 451 page every tap serves (``proxy.block_page``, else a short built-in one)."""
        p = self.config.proxy.block_page
        if p:
            try:
                return Path(p).read_bytes()
            except OSError:
                log.error("block page %s unreadable; serving the built-in one", p)
        return DEFAULT_BLOCK_PAGE

    def content_fingerprint(self, head: bytes) -> str:
        """Keyed hash of a body's first bytes: the same file under another URL has the same one."""
        return content_fingerprint(self.key, head)

    async def take_down(self, ctx: AlertContext, fingerprint: str | None, tripped_at: float, *,
                        result: ScanResult | None = None, exposure: dict | None = None) -> Takedown:
        """Commit the trip before the tap answers: await it before the 451 or the cut.

        Three stores, in this order (docs/operations.md, "Durability order"): the takedown
        (registry, fsynced; the resource is refused from the call on), then, concurrently, the SOC
        alert (spooled for every sink, fsynced) and the ledger incident (trip and takedown marks,
        the trip counter and the alert's evidence, fsynced), one transaction each on its store's
        disk thread. The alert is built from ``result``, the scan's result at the trip; without
        one it says only that the exchange tripped (note ``counts-unknown``). Its deliveries wait
        (at most ``TRIP_HOLD`` s) for the end of the exchange: :meth:`finished` writes the final
        counts into that same spooled alert (same dedup id) and releases them, instead of raising
        a second alert. A store the disk refuses does not stop the cut: the
        takedown is refused from memory and retried, the alert goes to the sinks from memory, the
        ledger keeps its marks for the next flush (each logged once). ``exposure``: the trip is
        cumulative exposure across responses already accounted (the alert's ``dlp.exposure``)."""
        actor, reason = f"sensor:{self.config.sensor_id}", "trip: personal-data leak"
        self.clean.forget(ctx.resource)             # no range of it is served as clean again
        commit = self.registry.add_soon(ctx.resource, actor=actor, reason=reason, fingerprint=fingerprint,
                                        exchange_id=ctx.exchange_id)
        if self.fleet is not None:                  # the fleet does not wait for this host's fsync
            self.fleet.announce(ctx.resource, actor=actor, reason=reason, fingerprint=fingerprint,
                                xid=ctx.exchange_id)
        durable = True
        try:
            td = await asyncio.shield(commit)
        except TakedownNotDurable as e:             # a full disk: refused from memory, commit retried
            td, durable = e.takedown, False
        else:
            self.metrics.detection_to_takedown.observe(time.perf_counter() - tripped_at)
        self.metrics.takedowns.labels(source="trip").inc()
        ctx.takedown_id = td.id
        await asyncio.shield(self._commit_trip(ctx, result, durable, exposure))
        return td

    async def _commit_trip(self, ctx: AlertContext, result: ScanResult | None, durable: bool,
                           exposure: dict | None) -> None:
        """The trip's alert (spool) and incident (ledger), committed concurrently (see take_down)."""
        now = time.time()
        ctx.ruleset = self.detector.generation
        alert = build_alert(ctx, _at_trip(result), key=self.key, source_ip=self.config.source_ip, now=now,
                            exposure=exposure)
        if not durable:
            alert["dlp"]["notes"].append(NOT_DURABLE_NOTE)
        self._committed[ctx.exchange_id] = alert["dlp"]["dedup_id"]
        while len(self._committed) > COMMITTED_LIMIT:          # a tap that never called finished()
            self._committed.pop(next(iter(self._committed)))
        client = self._client(ctx)
        hold = TRIP_HOLD if exposure is None else 0.0           # the exchange's end brings the final counts
        spooled = self.dispatcher.submit(alert, hold=hold)      # a disk fault: held in memory
        served = ctx.bytes_sent > 0 and exposure is None        # an exposure trip's responses are counted
        ledgered = self.ledger.commit_trip(ctx.resource, client=client, served=served,
                                           taken_down=True, evidence=evidence_of(alert, client=client), now=now)
        for what, outcome in zip(("alert spool", "exposure ledger"),
                                 await asyncio.gather(spooled, ledgered, return_exceptions=True)):
            if isinstance(outcome, BaseException) and not isinstance(outcome, DISK_ERRORS):
                log.error("exchange %s: the trip could not be committed to the %s (%s: %s)", ctx.exchange_id,
                          what, type(outcome).__name__, outcome)

    def refused(self, resource: str, reason: str) -> None:
        self.ledger.refused(resource)
        self.metrics.refusals.labels(reason=reason).inc()
        self.dispatcher.refused(incident_id(self.key, resource))     # counts into its incident, if any

    def finished(self, ctx: AlertContext, result: ScanResult | None, *, tap: str, completed: bool,
                 scan_seconds: float = 0.0, mirrored: bool = False, unscanned: str | None = None) -> dict | None:
        """Account for one exchange; returns the alert it raised or amended, if any.

        ``unscanned`` says why bytes left without a full scan (``overload``, ``scanner-error``,
        ``decode-limit``…): with no result the exchange counts into that reason's aggregated
        "unscanned" alert (:class:`~sensor.alerts.unscanned.UnscannedAlerts`: one at once, then one
        per window with the count); with a result the note ``unscanned: <reason>`` goes on its alert
        and a pass becomes an alert. An exchange whose trip :meth:`take_down` committed raises no
        second alert: its spooled alert gets the final counts (same dedup id) if it is still
        waiting for a sink."""
        m = self.metrics
        verdict = result.verdict if result else "mirrored" if mirrored else "unscanned"
        committed = self._committed.pop(ctx.exchange_id, None)
        if result is not None and unscanned:
            note = f"unscanned: {unscanned}"
            if note not in result.notes:
                result.notes.append(note)
            if result.verdict == "pass":
                result.verdict = verdict = "alert"  # the SOC hears of it, not only a metric
        m.exchanges.labels(tap=tap, verdict=verdict).inc()
        if result is None:
            self.ledger.served(ctx.resource, self._client(ctx), sent=ctx.bytes_sent, completed=completed,
                               partial=ctx.partial, records=0, verdict="pass")
            if unscanned and not mirrored:
                return self.unscanned.add(ctx, unscanned)
            return None
        m.bytes_scanned.labels(tap=tap).inc(result.bytes)
        m.scan_seconds.labels(tap=tap).observe(scan_seconds)
        for sig, n in result.findings.items():
            m.findings.labels(signature=sig).inc(n)
        for note in result.notes:
            if note.startswith(("decode-limit:", "decode-error:", "truncated:")):
                m.decode_limits.labels(reason=note.split(" ")[0]).inc()
        self.ledger.served(ctx.resource, self._client(ctx), sent=ctx.bytes_sent, completed=completed,
                           partial=ctx.partial, records=result.records, verdict=verdict,
                           trip_counted=committed is not None)
        if result.edm_rows:
            self.ledger.note_edm_rows(ctx.resource, result.edm_rows)
        if verdict != "trip" and (result.strong_ids or result.person_ids) and self._exposure(ctx, result):
            return None                             # its one alert is the exposure trip's (see _exposure)
        if verdict == "pass":
            return None
        if verdict == "trip":
            m.trips.labels(mode=ctx.mode).inc()
            if committed is None:
                self.ledger.mark(ctx.resource, "tripped")
                if ctx.takedown_id is not None:
                    self.ledger.mark(ctx.resource, "taken_down")
        ctx.ruleset = self.detector.generation
        now = time.time()
        alert = build_alert(ctx, result, key=self.key, source_ip=self.config.source_ip, now=now)
        if committed is not None and alert["dlp"]["dedup_id"] == committed:
            self.dispatcher.amend(alert)            # final counts, if no sink has it yet; never a second alert
            self.ledger.amend_evidence(ctx.resource, evidence_of(alert, client=self._client(ctx)), now)
        else:
            self.dispatcher.submit(alert)
            self.ledger.note_evidence(ctx.resource, evidence_of(alert, client=self._client(ctx)), now)
        if self.fleet is not None:
            from sensor.stream.records import finding_record
            self.fleet.publish_finding(ctx.resource, finding_record(
                ctx.exchange_id, ctx.resource, result, bytes_seen=ctx.bytes_sent,
                client=self._client(ctx),
                completed=completed, partial=ctx.partial, sensor=self.config.sensor_id,
                origin=self.config.sensor_id, served_at=now, tripped_at=now if verdict == "trip" else None, now=now))
        return alert

    def _exposure(self, ctx: AlertContext, result: ScanResult) -> bool:
        """Count this response's records into the exposure windows (sensor.enforce.exposure); when a
        resource, or a client on a route, crosses the policy's trip thresholds, trip: take the
        resource down (enforce routes; monitor routes alert only), raise ONE alert naming the total
        and the responses it came from, and mark the ledger. True when it tripped."""
        from sensor.enforce.exposure import ExposureTracker
        tracker: ExposureTracker | None = getattr(self, "exposure", None)
        if tracker is None:
            tracker = self.exposure = ExposureTracker(self.config.exposure)
        tracker.settings = self.config.exposure                 # a reload may change them
        path = ctx.url.get("path") or "/" + ctx.resource.split("/", 1)[-1].split("?", 1)[0]
        policy = self.detector.policy
        route = next((r.match for r in policy.routes if fnmatch.fnmatchcase(path, r.match)), None) \
            or next((r.match for r in self.config.proxy.routes if fnmatch.fnmatchcase(path, r.match)), None) \
            or path.rsplit("/", 1)[0] + "/*"                    # no route: the resource's directory
        trip = route_for(self.config, policy, path).policy.trip      # the route table's thresholds
        now = time.time()
        crossed = tracker.add(resource=ctx.resource, route=route, client=self._client(ctx),
                              strong=result.strong_ids, person=result.person_ids, capped=result.ids_capped,
                              now=now, strong_trip=trip.strong_records, person_trip=trip.person_records)
        if not crossed:
            return False
        c = crossed[0]                                          # the resource's own, when both crossed
        summary = dataclasses.replace(result, verdict="trip", records=c.records, strong_records=c.strong_records,
                                      person_records=c.person_records, notes=[*result.notes, (
                                          f"exposure: {c.records} distinct records from {c.responses} responses "
                                          f"in {self.config.exposure.window_s:g} s ({c.scope} {c.key})")])
        enforce = ctx.mode == "enforce"
        tctx = dataclasses.replace(ctx, action="takedown" if enforce else "logged", takedown_id=None)
        exposure = {"scope": c.scope, "key": c.key, "records": c.records, "strong_records": c.strong_records,
                    "person_records": c.person_records, "responses": c.responses,
                    "window_s": self.config.exposure.window_s, "approximate": c.approximate}

        async def trip_() -> None:
            self.metrics.trips.labels(mode=ctx.mode).inc()
            if enforce:
                try:                                    # takedown, alert and ledger marks committed together
                    await self.take_down(tctx, None, time.perf_counter(), result=summary, exposure=exposure)
                    return
                except Exception:                       # the alert still goes out, saying no takedown id
                    log.exception("exposure takedown of exchange %s failed", ctx.exchange_id)
                finally:
                    self._committed.pop(tctx.exchange_id, None)     # the exchange has ended already
            self.ledger.mark(ctx.resource, "tripped")
            tctx.ruleset = self.detector.generation
            alert = build_alert(tctx, summary, key=self.key, source_ip=self.config.source_ip, now=time.time(),
                                exposure=exposure)
            self.dispatcher.submit(alert)
            self.ledger.note_evidence(ctx.resource, evidence_of(alert, client=self._client(ctx)), time.time())

        task = asyncio.get_running_loop().create_task(trip_(), name=f"exposure-trip-{ctx.exchange_id}")
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)
        return True

    def _client(self, ctx: AlertContext) -> str | None:
        """The client's keyed hash: the alert's ``dlp.client.hash``, in the ledger and the fleet finding too."""
        return client_hash(self.key, ctx.client_ip) if ctx.client_ip else None
