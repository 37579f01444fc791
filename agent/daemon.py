"""The agent daemon: wires the components together and owns their start and stop order.

Start: queue -> devices -> MQTT link (publisher) -> continuous capture (if configured).
Stop is the reverse, so that no capture is taken that cannot be committed, and everything
committed is either acknowledged or still safely in the queue for the next start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from agent import __version__
from agent.capture import CaptureService, ContinuousCapture
from agent.config import AgentConfig
from agent.devices import DeviceWorker
from agent.durable_queue import DurableQueue
from agent.mqtt_link import MqttLink, Will
from agent.protocol import Topics, status_payload
from agent.publisher import Publisher
from drivers import driver_class

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.topic_prefix, config.kiosk.id)
        self.queue: DurableQueue | None = None
        self.workers: dict[str, DeviceWorker] = {}
        self.capture: CaptureService | None = None
        self.continuous: ContinuousCapture | None = None
        self.publisher: Publisher | None = None
        self.link: MqttLink | None = None
        self.started_at = 0.0
        self._stop_requested = threading.Event()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        self.started_at = time.time()
        self.queue = DurableQueue(cfg.queue.path, max_bytes=cfg.queue.max_bytes,
                                  min_free_bytes=cfg.queue.min_free_bytes)
        for name, dev_cfg in cfg.devices.items():
            if not dev_cfg.enabled:
                continue
            driver = driver_class(dev_cfg.driver)(name, dev_cfg)
            self.workers[name] = DeviceWorker(name, driver)
        for worker in self.workers.values():
            worker.start()
        self.capture = CaptureService(cfg, self.queue, self.workers)
        status = self.status_fields()
        self.publisher = Publisher(self.queue, cfg.mqtt, self.topics, status)
        will = Will(self.topics.status, status_payload("offline", **status))
        self.link = MqttLink(cfg.mqtt, self.publisher, client_id=cfg.client_id(), name="agent",
                             will=will)
        self.link.start()
        if cfg.capture.mode == "continuous":
            self.continuous = ContinuousCapture(self.capture)
            self.continuous.start()
        items, size = self.queue.totals()
        log.info("kiosk-agent %s started: kiosk %s, %d devices, %d captures (%d bytes) queued",
                 __version__, cfg.kiosk.id, len(self.workers), items, size)

    def stop(self) -> None:
        """Stop taking captures, finish the one in hand, publish offline, close the queue."""
        log.info("stopping")
        if self.continuous is not None:
            self.continuous.stop()
        for worker in self.workers.values():
            worker.stop()
        if self.link is not None:
            self.link.stop()
        if self.queue is not None:
            items, _ = self.queue.totals()
            self.queue.close()
            log.info("stopped; %d captures remain queued for the next start", items)

    def run_until_signalled(self) -> None:
        """Run in the foreground until SIGTERM or SIGINT, then stop cleanly."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self._stop_requested.wait(1.0):
                self._check_threads()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def request_stop(self) -> None:
        self._stop_requested.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self._stop_requested.set()

    def _check_threads(self) -> None:
        if self.link is not None and not self.link.alive:
            log.critical("the MQTT thread died; stopping so the service manager restarts the agent")
            self._stop_requested.set()

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
