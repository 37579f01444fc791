"""The agent daemon: wires the components together and owns their start and stop order.

Start: remote control (audit store, command workers) -> queue -> devices -> MQTT link
(command replies, telemetry and events, captures) -> continuous capture (if configured).
Stop is the reverse, so that no capture is taken that cannot be committed, and everything
committed is either acknowledged or still safely in the queue for the next start.

``reload`` stops and restarts everything but remote control with a new config: the
``config.set`` and ``restart`` commands use it, and roll back when the new config cannot
reach the broker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import __version__, shutdown
from agent.capture.build import build_driver
from agent.capture.hotplug import HotplugMonitor
from agent.capture.service import CaptureOutcome, CaptureService, ContinuousCapture
from agent.capture.workers import DeviceWorker
from agent.config import AgentConfig, ConfigError
from agent.console.policy import apply_policy
from agent.console.server import Console
from agent.guard import log_and_continue
from agent.logs import recent_logs
from agent.registration.central_status import CentralStatus
from agent.registration.local_api import LocalApi
from agent.registration.service import RegistrationService
from agent.remote.audit import RemoteStore
from agent.remote.control import RemoteControl, operator_key_exposure
from agent.runtime import CaptureCounts, Connection, Deliveries, Restarting
from agent.sd_notify import Notifier
from agent.security.keys import KeyFileError, load_encryption_public, load_receipt_keys, load_signing_key
from agent.security.sealing import Sealer
from agent.transport.central_hints import CentralHints
from agent.transport.durable_queue import DurableQueue, QueueStats
from agent.transport.events import EventBus
from agent.transport.handler_chain import HandlerChain
from agent.transport.mqtt_link import KIOSK_IDLE_WAIT_S, MqttLink, Will
from agent.transport.protocol import Topics, status_payload
from agent.transport.publisher import Publisher
from agent.transport.telemetry import TelemetryPublisher
from agent.transport.uplink import Uplink

log = logging.getLogger(__name__)

#: How long start-up waits for each device's first open before reporting ready anyway.
DEVICE_OPEN_WAIT_S = 10.0
#: The largest MQTT packet the kiosk accepts (announced to the broker): its largest genuine
#: message is a batch of receipts (agent/transport/receipts.py MAX_HEADER_BYTES, 1 MiB);
#: commands are 64 KiB at most.
KIOSK_MAX_INCOMING_BYTES = 2 * 1024 * 1024


class Agent:
    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        self.config = config
        #: The file config.set and restart reload from; None: remote config changes refused.
        self.config_path = config_path
        self.events = EventBus()
        self.remote_store: RemoteStore | None = None
        self.remote: RemoteControl | None = None
        self.telemetry: TelemetryPublisher | None = None
        self.registrations: RegistrationService | None = None
        self.central: CentralStatus | None = None
        self.local_api: LocalApi | None = None
        self.console: Console | None = None
        #: True while reload() swaps the components; commands answer "busy" meanwhile.
        self.reloading = False
        self._lifecycle = threading.Lock()
        self._queue_open = False
        self.topics = Topics(config.mqtt.topic_prefix, config.kiosk.id)
        self.queue: DurableQueue | None = None
        self.workers: dict[str, DeviceWorker] = {}
        self.hotplug: HotplugMonitor | None = None
        self.capture: CaptureService | None = None
        self.continuous: ContinuousCapture | None = None
        self.publisher: Publisher | None = None
        self.link: MqttLink | None = None
        self.started_at = 0.0
        self.notifier = Notifier()
        self._stop_requested = threading.Event()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._stop_requested.is_set():
            log.info("a stop was requested while the agent was loading; not starting")
            return
        # Before anything starts: an operator's private key the service user can read is the
        # whole fleet's to lose, so it is a config error (exit 2), not a warning.
        exposed = operator_key_exposure(self.config.remote, self.config.security.service_user)
        if exposed:
            raise ConfigError("remote.operators", exposed)
        self.started_at = time.time()
        recent_logs()  # the diagnostics command's recent lines
        remote = self.config.remote
        if remote.enabled:
            self.remote_store = RemoteStore(remote.state_dir / "remote.db")
            self.remote = RemoteControl(self, self.remote_store)
            self.remote.start()
        self._start_components()
        if self.config.local_api.enabled:
            # Started once, not per reload: the registration app keeps its address.
            self.local_api = LocalApi(self)
            self.local_api.start()
        if self.config.console.enabled:
            # Like the local API: one listener for the agent's life (docs/console.md).
            self.console = Console(self, audit=self.remote_store)
            self.console.start()
        items, size = self.queue.totals() if self.queue else (0, 0)
        log.info("kiosk-agent %s started: kiosk %s, %d devices, %d captures (%d bytes) queued",
                 __version__, self.config.kiosk.id, len(self.workers), items, size)
        self.notifier.ready(self.status_line())

    def _start_components(self) -> None:
        cfg = self.config
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.kiosk.id)
        self.workers = {}
        sealer = self._sealer()  # before anything starts: no keys, no captures
        receipt_keys = self._receipt_keys()  # nor a kiosk that could never delete what it sent
        self.queue = DurableQueue(cfg.queue.path, max_bytes=cfg.queue.max_bytes,
                                  min_free_bytes=cfg.queue.min_free_bytes,
                                  erase_interval_s=cfg.queue.erase_interval_s,
                                  reserve_bytes=cfg.queue.reserve_bytes)
        self._queue_open = True
        if self.queue.quarantined:
            self.events.emit("queue_quarantined", path=str(cfg.queue.path), **self.queue.quarantined)
        for name, dev_cfg in cfg.devices.items():
            if not dev_cfg.enabled:
                continue
            self.workers[name] = DeviceWorker(name, build_driver(name, dev_cfg, cfg.quality.face))
        for worker in self.workers.values():
            worker.start()
        # Scanners plugged in or out: workers reopen or go offline at once; support hears of it.
        self.hotplug = HotplugMonitor(self.workers, on_event=lambda e: self.events.emit(
            e["event"], **{k: v for k, v in e.items() if k != "event"}))
        self.hotplug.start()
        self.capture = CaptureService(cfg.kiosk, cfg.capture, self.queue, self.workers, sealer)
        self.registrations = RegistrationService(
            cfg.registration, kiosk=cfg.kiosk, quality=cfg.quality, formats=cfg.formats,
            capture=self.capture, queue=self.queue, sealer=sealer, workers=self.workers)
        # The clock (vans, docs/vans.md): judged now, recorded in every manifest, and a clock
        # that is clearly wrong stops new registrations instead of stamping wrong dates.
        from agent.clock.watch import ClockGate, ClockWatch

        # And where it is (vans with a GNSS receiver): in every manifest, in telemetry, the
        # area rule, and GNSS time for the clock check.
        self.position = None
        if cfg.position.source != "none":
            from agent.position.service import AreaGate, PositionService

            self.position = PositionService(cfg.position)
            self.position.start()
            self.registrations.gates.add(AreaGate(self.position))
            self.registrations.manifest_fields["position"] = self.position.manifest
        self.clock = ClockWatch(cfg.clock, gnss=self.position.gnss_time if self.position else None)
        self.clock.state()
        self.registrations.gates.add(ClockGate(self.clock))
        # The cellular modem's signal and registration, for telemetry (null without ModemManager).
        from agent.transport.modem import ModemWatch

        self.modem = ModemWatch()
        self.registrations.manifest_fields["clock"] = lambda: self.clock.state().manifest()
        status = self.status_fields()
        self.publisher = Publisher(self.queue, cfg.mqtt, self.topics, status, uplink=cfg.uplink,
                                   state_dir=cfg.state_dir, on_event=self.events.emit,
                                   receipt_keys=receipt_keys, signer=sealer)
        publisher = self.publisher
        # Supervisor approval and the blocking rules (agent/console/policy.py).
        apply_policy(cfg.console, self.registrations, self.queue, publisher.rewind)
        # What the central side hints when it cannot answer with a receipt (a kiosk not
        # enrolled): unsigned, so words in the log and telemetry only.
        hints = CentralHints(self.topics, self.events, lambda: publisher.counters.acknowledged)
        self.telemetry = TelemetryPublisher(self, self.events, cfg.telemetry.interval_s,
                                            lambda: publisher.counters.acknowledged, hints=hints)
        # What the central side says of each registration (signed with the receipt keys).
        self.central = CentralStatus(self.registrations.store, self.topics, receipt_keys, self.events.emit,
                                     query_interval_s=cfg.registration.central_query_interval_s,
                                     query_after_s=cfg.registration.central_query_after_s)
        # Priority: command replies, then telemetry and events, registration statuses, captures.
        chain = HandlerChain(*([self.remote] if self.remote else []), self.telemetry, self.central,
                             hints, self.publisher)
        will = Will(self.topics.status, status_payload("offline", **status))
        self.link = MqttLink(cfg.mqtt, chain, client_id=cfg.client_id(), name="agent", will=will,
                             max_incoming_bytes=KIOSK_MAX_INCOMING_BYTES, idle_wait_s=self._idle_wait_s())
        # A committed capture wakes the MQTT thread at once: it sleeps instead of polling.
        self.queue.on_commit = self.link.wake
        self.link.start()
        self._warn_certificate(cfg)
        if cfg.capture.mode == "continuous":
            self.continuous = ContinuousCapture(self.capture)
            self.continuous.start()
        # Devices get a moment to open before READY, unless a stop is asked for meanwhile.
        deadline = time.monotonic() + DEVICE_OPEN_WAIT_S
        for worker in self.workers.values():
            while not worker.wait_first_open(0.1):
                if self._stop_requested.is_set() or time.monotonic() >= deadline:
                    break

    def _warn_certificate(self, cfg: AgentConfig) -> None:
        expires = self.link.cert_expires_at if self.link else None
        if expires is None:
            return
        days = (expires.timestamp() - time.time()) / 86400
        if days < cfg.mqtt.tls.expiry_warning_days:
            self.events.emit("certificate_expiring", cert_file=str(cfg.mqtt.tls.cert_file),
                             expires_at=expires.isoformat(), days_left=round(days, 1))

    def _sealer(self) -> Sealer:
        sec = self.config.security
        try:
            return Sealer(load_signing_key(sec.kiosk_key), load_encryption_public(sec.central_public_key))
        except KeyFileError as exc:
            raise ConfigError("security", [str(exc)]) from None

    def _receipt_keys(self) -> dict[str, Ed25519PublicKey]:
        if self.config.mqtt.ack_mode != "receipt":
            return {}  # nothing waits for a receipt
        try:
            return load_receipt_keys(self.config.security.receipt_keys)
        except KeyFileError as exc:
            raise ConfigError("security", [str(exc)]) from None

    def stop(self, quiet: bool = False) -> None:
        """Stop taking captures, finish the one in hand, publish offline, close the queue."""
        if not quiet:
            log.info("stopping")
            self.notifier.stopping("stopping: finishing the capture in hand, publishing offline")
        if self.local_api is not None:
            self.local_api.stop()
        if self.console is not None:
            self.console.stop()
        self._stop_components()
        if self.remote is not None:
            self.remote.stop()
        if self.remote_store is not None:
            self.remote_store.close()

    def _stop_components(self) -> None:
        if self.continuous is not None:
            self.continuous.stop()
            self.continuous = None
        if self.hotplug is not None:
            self.hotplug.stop()
            self.hotplug = None
        if getattr(self, "position", None) is not None:
            self.position.stop()
            self.position = None
        for worker in self.workers.values():
            worker.stop()
        if self.registrations is not None:
            self.registrations.close()
        if self.link is not None:
            self.link.stop()
        if self.queue is not None and self._queue_open:
            items, _ = self.queue.totals()
            self.queue.close()
            self._queue_open = False
            log.info("stopped; %d captures remain queued for the next start", items)

    def reload(self, config: AgentConfig, connect_within_s: float) -> bool:
        """Restart every component with ``config``; True when MQTT connects within the time.

        A config that fails to start (bad TLS files, keys) counts as not connecting. The
        caller decides whether to roll back (commands.config_set) or keep trying (restart).
        """
        with self._lifecycle:
            self.reloading = True
            try:
                log.warning("restarting the agent's components with %s config",
                            "a new" if config is not self.config else "the same")
                self._stop_components()
                self.config = config
                try:
                    self._start_components()
                except Exception as exc:
                    log.error("the new config cannot start: %s", exc)
                    self._stop_components()
                    return False
            finally:
                self.reloading = False
        deadline = time.monotonic() + connect_within_s
        while time.monotonic() < deadline:
            if self.link is not None and self.link.connected:
                return True
            time.sleep(0.05)
        return False

    def run_until_signalled(self) -> None:
        """Run in the foreground until SIGTERM or SIGINT, then stop cleanly: also when the
        signal comes while the agent is still starting (systemd may stop a starting unit)."""
        self._stop_requested = shutdown.install()
        started = False
        try:
            self.start()
            started = True
            self.supervise(self._stop_requested)
        finally:
            if shutdown.received():
                log.info("received %s", shutdown.received())
            # A failed start (a config error) closes what it opened without the "stopping" line.
            self.stop(quiet=not started)

    def request_stop(self) -> None:
        self._stop_requested.set()

    def supervise(self, stop: threading.Event) -> None:
        """The main thread's loop until ``stop``: watchdog pings, STATUS= lines, and erasing
        the registration sessions the central side has all of.

        WATCHDOG=1 goes out only while the MQTT loop turns: if it hangs, systemd stops
        hearing from us and restarts the service.
        """
        watchdog = self.notifier.watchdog_s
        period = min(1.0, watchdog / 4) if watchdog else 1.0
        last_status = ""
        next_erase = 0.0
        while not stop.wait(period):
            if self.reloading:
                continue
            if self.link is not None and not self.link.alive:
                log.critical("the MQTT thread died; stopping so the service manager restarts the agent")
                stop.set()
                break
            if watchdog and self.healthy(stale_after_s=watchdog / 2):
                self.notifier.watchdog()
            status = self.status_line()
            if status != last_status:
                self.notifier.status(status)
                last_status = status
            if time.monotonic() >= next_erase:
                # Personal data leaves the kiosk on the queue's erasure schedule (an fsync each).
                next_erase = time.monotonic() + self.config.queue.erase_interval_s
                self.erase_delivered_sessions()

    def erase_delivered_sessions(self) -> int:
        """Erase what the central side has all of (skipped during a reload: the next turn catches up)."""
        if not self._lifecycle.acquire(blocking=False):
            return 0
        try:
            if self.registrations is None or not self._queue_open:
                return 0
            with log_and_continue(log, "erasing delivered registration sessions failed"):
                return self.registrations.erase_delivered()
            return 0
        finally:
            self._lifecycle.release()

    def _idle_wait_s(self) -> float:
        """Idle MQTT sleep: its turns are the watchdog's heartbeat (younger than WatchdogSec/2)."""
        watchdog = self.notifier.watchdog_s
        return min(KIOSK_IDLE_WAIT_S, watchdog / 4) if watchdog else KIOSK_IDLE_WAIT_S

    def healthy(self, stale_after_s: float) -> bool:
        link = self.link
        return link is not None and link.alive and time.monotonic() - link.heartbeat < stale_after_s

    def status_line(self) -> str:
        """One line for `systemctl status`: connection, backlog, devices."""
        items = self.queue.totals()[0] if self.queue else 0
        link = self.link
        if link is None or not link.connected:
            cfg = self.config.mqtt
            connection = f"waiting for broker {cfg.host}:{cfg.port}"
        else:
            connection = "connected"
        devices = ", ".join(f"{n} {w.state}" for n, w in self.workers.items()) or "no devices"
        return f"{connection}; {items} queued; {devices}"

    # --- the Runtime interface (agent/runtime.py) ----------------------------------------
    # What remote commands, telemetry and the local API may ask; they never hold the parts.

    def device_workers(self) -> Mapping[str, DeviceWorker]:
        return self.workers

    def registration_service(self) -> RegistrationService | None:
        return self.registrations

    def central_status(self) -> CentralStatus | None:
        return self.central

    def take_capture(self, device: str, position: int) -> Future[CaptureOutcome]:
        if self.capture is None:
            raise Restarting()
        return self.capture.capture(device, position)

    def queue_stats(self) -> QueueStats | None:
        return self.queue.stats() if self.queue is not None and self._queue_open else None

    def retry_rejected(self) -> int:
        if self.queue is None:
            return 0
        count = self.queue.retry_rejected()
        if self.publisher is not None:
            self.publisher.rewind()  # the retried captures go out before newer ones
        return count

    def purge_queue(self, states: tuple[str, ...]) -> tuple[int, int]:
        if self.queue is None:
            return 0, 0
        return self.queue.purge(states)

    def connection(self) -> Connection:
        link = self.link
        if link is None:
            return Connection(False, 0, None)
        return Connection(link.connected, max(0, link.connects - 1), link.cert_expires_at)

    def deliveries(self) -> Deliveries | None:
        if self.publisher is None:
            return None
        c = self.publisher.counters
        return Deliveries(c.published, c.acknowledged, c.rejected)

    def capture_counts(self) -> CaptureCounts:
        capture = self.capture
        return CaptureCounts(capture.captured_today, capture.refused) if capture else CaptureCounts(0, 0)

    def uplink(self) -> Uplink | None:
        return self.publisher.uplink if self.publisher is not None else None

    def recent_audit(self, limit: int) -> list[dict[str, Any]]:
        return self.remote_store.recent_audit(limit) if self.remote_store is not None else []

    # --- status -------------------------------------------------------------------------

    def status_fields(self) -> dict[str, Any]:
        return {
            "kiosk_id": self.config.kiosk.id,
            "site": self.config.kiosk.site,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "devices": [
                {"name": name, "driver": w.driver.name, "modality": w.driver.modality.value}
                for name, w in self.workers.items()
            ],
        }
