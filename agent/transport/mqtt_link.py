"""One MQTT connection, owned by one thread.

The thread runs paho's network loop itself (no ``loop_start``) so that paho's callbacks and
the handler's own work (``tick``) happen on the same thread: the handler's state needs no
locks, and nothing can run concurrently with a callback.

The loop does not poll. Between turns it sleeps in select() on paho's socket and on a wake-up
socket pair: a byte from the broker (a receipt, a PUBACK) or ``wake()`` from any thread (a
capture committed) starts the next turn at once. Otherwise it sleeps until the earliest time a
handler asked for (``wake_at``) or at most ``idle_wait_s``, for handlers that work on timers
(telemetry, resends, the WAL's erasure) or take work from other threads without waking it:
``IDLE_WAIT_S`` by default (the receiver, operator tools), ``KIOSK_IDLE_WAIT_S`` for the
kiosk's link, whose owner wakes it for everything that must not wait. It reconnects with jittered
exponential backoff, reset after a connection has been stable for a while, and reads the
broker's CONNACK limits (Receive Maximum, Maximum Packet Size) that paho ignores.

Every paho callback and handler call is a log-and-continue boundary (agent/guard.py): an
exception escaping a callback would kill the network loop (see shared notes on paho pitfalls).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.clock.watch import tls_clock_hint
from agent.config_types import ConfigError
from agent.guard import log_and_continue
from agent.transport.backoff import Backoff
from agent.transport.broker_tls import ClosingTlsContext, check_certificate_expiry, tls_context
from agent.transport.config import PLAINTEXT_REFUSED, MqttConfig
from agent.transport.wakeup import Wakeup

# Imported from here by agent/preflight.py and others; they live in broker_tls.py.
__all__ = ["BrokerLimits", "ClosingTlsContext", "LinkHandler", "MqttLink", "Will",
           "check_certificate_expiry", "tls_context"]

log = logging.getLogger(__name__)

#: MQTT's own ceiling for a packet (268,435,455 bytes) when the broker states no smaller one.
MQTT_MAX_PACKET = 268_435_455
#: How long the loop may sleep in select() when nothing wakes it: the resolution of timers and
#: the longest wait of work handed over from another thread without ``wake()``. Broker traffic
#: and ``wake()`` start a turn at once whatever it is.
IDLE_WAIT_S = 0.05
#: The kiosk's link (agent/daemon.py): a committed capture wakes it, so it need not poll; events
#: and command replies from other threads wait at most this long. A 50 ms poll cost about 1 %
#: of a core on an idle kiosk (20 turns and queue queries a second); a van runs on a battery.
KIOSK_IDLE_WAIT_S = 0.5
#: paho's in-flight limit is the capture window plus this many: command replies, telemetry,
#: events and status share the connection and must not queue in paho behind a full window.
CONTROL_INFLIGHT_ALLOWANCE = 8
#: A PINGREQ unanswered this long (in keepalives) means a dead link: sent after one
#: keepalive of silence, it keeps the whole under 1.5, with room for a slow loop turn.
PING_ANSWER_KEEPALIVES = 0.4
#: DISCONNECT "with will message": the broker publishes the last will all the same.
WILL_DISCONNECT = ReasonCode(PacketTypes.DISCONNECT, identifier=4)


@dataclass(frozen=True)
class BrokerLimits:
    receive_maximum: int = 65535
    maximum_packet_size: int = MQTT_MAX_PACKET


class LinkHandler(Protocol):
    """What a connection's owner does; all methods run on the link's thread."""

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None: ...
    def on_disconnected(self, link: MqttLink) -> None: ...
    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None: ...
    def on_puback(self, link: MqttLink, mid: int) -> None: ...
    def tick(self, link: MqttLink) -> bool:
        """Do pending work; return True when there may be more to do right away."""
        ...
    def on_stopping(self, link: MqttLink) -> None:
        """Last words before a clean disconnect (for example an offline status)."""
        ...


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


class MqttLink:
    def __init__(
        self,
        config: MqttConfig,
        handler: LinkHandler,
        *,
        client_id: str,
        name: str,
        will: Will | None = None,
        max_incoming_bytes: int | None = None,
        idle_wait_s: float | None = None,
    ) -> None:
        self.config = config
        # The module's value read now, not at import: bench/fleet.py raises it for its workers.
        self.idle_wait_s = IDLE_WAIT_S if idle_wait_s is None else idle_wait_s
        #: Announced to an MQTT 5 broker as Maximum Packet Size: the broker then drops anything
        #: larger instead of sending it, so a hostile client's 200 MB publish on a topic this
        #: side reads never reaches paho's buffers (it was read whole, then refused).
        self.max_incoming_bytes = max_incoming_bytes
        self.handler = handler
        self.name = name
        self.v5 = config.protocol == "5"
        self.connected = False
        #: SUBSCRIBE packet ids the broker has not acknowledged yet on this connection.
        self._unacked_subscriptions: set[int] = set()
        self.limits = BrokerLimits()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._connected_at = 0.0
        self._connect_started = 0.0
        self.connects = 0
        #: Monotonic time of the loop's last turn; the service watchdog checks it.
        self.heartbeat = time.monotonic()
        self.next_retry_at = 0.0
        self.cert_expires_at: datetime | None = None
        self._tls: ClosingTlsContext | None = None
        self._params_set = False
        self._client = self._make_client(client_id, will)
        # wake(): any thread writes a byte, the loop's select() returns. Opened by start() and
        # closed when the thread ends, so a link never started holds no descriptors.
        self._wakeup = Wakeup()

    # --- set-up -------------------------------------------------------------------------

    def _make_client(self, client_id: str, will: Will | None) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            # Under 3.1.1 a clean session; under 5 clean_start is set at connect().
            clean_session=None if self.v5 else True,
            reconnect_on_failure=False,  # this class owns reconnects (with jitter)
        )
        client.connect_timeout = cfg.connect_timeout_s
        password = cfg.resolved_password()
        if cfg.username is not None or password is not None:
            client.username_pw_set(cfg.username, password)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        if cfg.tls.enabled:
            self._tls = tls_context(cfg.tls)
            client.tls_set_context(self._tls)
            self.cert_expires_at = check_certificate_expiry(cfg.tls)
        elif not cfg.allow_plaintext:
            # The config models refuse this already; a config put together without validation
            # (model_copy, model_construct) must not reach a broker in clear either.
            raise ConfigError("mqtt", [PLAINTEXT_REFUSED])
        else:
            log.warning("%s: plain MQTT to %s:%d (mqtt.allow_plaintext): for a lab or demo broker only",
                        self.name, cfg.host, cfg.port)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        # paho's own buffers stay small: the handler feeds a bounded window.
        client.max_inflight_messages_set(cfg.inflight_window + CONTROL_INFLIGHT_ALLOWANCE)
        return client

    # --- thread life cycle --------------------------------------------------------------

    def start(self) -> None:
        self._wakeup.open()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("MQTT thread %s did not stop within %.0f s", self.name, timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.heartbeat = time.monotonic()
                if not self._client.is_connected() and not self._connect_started:
                    self._try_connect()
                    continue
                self._serve_once()
            self._shutdown()
        except Exception:
            # Last line of defence: the link must never die silently.
            log.exception("MQTT link %s crashed; the agent will stop", self.name)
            raise

    def _try_connect(self) -> None:
        cfg = self.config
        try:
            if not self._params_set:
                # Stores host, port and CONNECT properties without touching the network.
                self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s,
                                           clean_start=True, properties=self._connect_properties())
                self._params_set = True
            self._client.reconnect()
            self._connect_started = time.monotonic()
        except ssl.SSLError as exc:
            # Retried with TLS only: there is no plaintext fallback, ever.
            if self._tls is not None:
                self._tls.close_failed()
            detail = getattr(exc, "verify_message", "") or exc.reason or str(exc)
            self._wait_before_retry(
                f"TLS handshake with broker {cfg.host}:{cfg.port} failed ({detail}); check "
                "mqtt.tls.ca_file, cert_file, key_file and the certificates' dates" + tls_clock_hint(exc))
        except (TimeoutError, OSError) as exc:
            if self._tls is not None:
                self._tls.close_failed()
            self._wait_before_retry(f"cannot reach broker {cfg.host}:{cfg.port}: {exc}")

    def _connect_properties(self) -> Properties | None:
        if not self.v5:
            return None
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = self.config.receive_maximum
        if self.max_incoming_bytes is not None:
            props.MaximumPacketSize = self.max_incoming_bytes
        return props

    def _wait_before_retry(self, why: str) -> None:
        delay = self._backoff.next_delay()
        log.warning("%s; retrying in %.1f s (attempt %d)", why, delay, self._backoff.attempt)
        self._connect_started = 0.0
        self.next_retry_at = time.monotonic() + delay
        # Wait in short slices so the heartbeat shows a live loop during long backoffs.
        while not self._stop.is_set() and time.monotonic() < self.next_retry_at:
            self.heartbeat = time.monotonic()
            self._stop.wait(min(1.0, self.next_retry_at - time.monotonic()))

    def wake(self) -> None:
        """Start the next loop turn now (any thread; cheap, coalesced)."""
        self._wakeup.wake()

    def wake_at(self, when: float) -> None:
        """Ask for a loop turn no later than ``when`` (time.monotonic()); link thread only."""
        self._wakeup.wake_at(when)

    def _sleep(self, busy: bool) -> None:
        """Until broker traffic, a wake-up, the earliest asked-for time or ``idle_wait_s``."""
        if not busy:
            self._wakeup.sleep(self._client.socket(), self._client.want_write, self.idle_wait_s)

    def _serve_once(self) -> None:
        busy = False
        if self.connected:
            busy = self._safe_tick()
            if self._connected_at and time.monotonic() - self._connected_at >= self.config.stable_after_s:
                self._backoff.reset()
        # Sleep here (paho's socket and the wake-up pair), then let paho do its part without
        # waiting: reading, writing, keepalive.
        self._sleep(busy)
        rc = self._client.loop(timeout=0.0)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            why = f"connection to {self.config.host}:{self.config.port} lost ({mqtt.error_string(rc)})"
            if self._tls is not None and not self.connected:
                # With TLS 1.3 a refused client certificate shows up only now, as a closed line.
                why += ("; the broker closed the TLS connection before accepting it: check that "
                        "mqtt.tls.cert_file is set, valid and signed by a CA the broker trusts")
            self._lost(why)
        elif not self.connected and self._connect_started:
            if time.monotonic() - self._connect_started > self.config.connect_timeout_s:
                self._client.disconnect()
                self._lost("broker did not answer CONNECT in time")
        elif self.connected and self._ping_unanswered():
            # paho closes the socket once this is written. Should the broker still hear it
            # (a slow link, not a dead one), MQTT 5's reason code 4 keeps the last will.
            self._client.disconnect(reasoncode=WILL_DISCONNECT if self.v5 else None)
            self._lost(f"connection to {self.config.host}:{self.config.port} lost (no answer to PINGREQ "
                       f"within {PING_ANSWER_KEEPALIVES:g} keepalive)")

    def _ping_unanswered(self) -> bool:
        """paho sends PINGREQ after a keepalive without traffic but gives up only a whole
        keepalive later: two keepalives after the last byte from the broker. The agent
        promises a dead link noticed within 1.5 (docs/reliability.md), so a PINGREQ that
        brings no byte for PING_ANSWER_KEEPALIVES ends the connection. paho keeps both times
        private (paho-mqtt 2.x: time.monotonic); without them paho's own check applies."""
        sent = getattr(self._client, "_ping_t", 0)
        heard = getattr(self._client, "_last_bytes_received", 0)
        return (bool(sent) and heard <= sent
                and time.monotonic() - sent > self.config.keepalive_s * PING_ANSWER_KEEPALIVES)

    def _lost(self, why: str) -> None:
        if self.connected:
            self.connected = False
            self._safe(self.handler.on_disconnected, self)
        self._connected_at = 0.0
        self._wait_before_retry(why)

    def _safe_tick(self) -> bool:
        busy = False
        with log_and_continue(log, "error in %s work loop; continuing", self.name):
            busy = bool(self.handler.tick(self))
        return busy

    def _safe(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        with log_and_continue(log, "error in %s handler %s; continuing", self.name,
                              getattr(fn, "__name__", fn)):
            fn(*args)

    def _shutdown(self) -> None:
        if self.connected:
            self._safe(self.handler.on_stopping, self)
            self._client.disconnect()  # a clean DISCONNECT: the broker drops the will
            self.flush(1.0, lambda: not self._client.is_connected())
            self.connected = False
        # paho keeps a loopback socket pair for wake-ups that only reconnect() or garbage
        # collection closes; close it now so a stopped link holds no descriptors. Ours too.
        self._client._reset_sockets()
        self._wakeup.close()

    # --- used by handlers (on the link thread) ------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                properties: Properties | None = None) -> int:
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise OSError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info.mid

    def subscribe(self, topic: str, qos: int = 1) -> None:
        rc, mid = self._client.subscribe(topic, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("subscribe to %s failed: %s", topic, mqtt.error_string(rc))
        elif mid is not None:
            self._unacked_subscriptions.add(mid)

    @property
    def subscribed(self) -> bool:
        """Connected, and every subscription made on this connection acknowledged: from here
        on nothing published to those topics passes us by (a message published before the
        SUBACK may not be delivered)."""
        return self.connected and not self._unacked_subscriptions

    def flush(self, deadline_s: float, done) -> bool:  # type: ignore[no-untyped-def]
        """Run the network loop until ``done()`` or the deadline; for last words at stop."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if done():
                return True
            if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
        return done()

    # --- paho callbacks (each catches its own errors) -----------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        with log_and_continue(log, "error handling CONNACK; continuing"):
            if reason_code.is_failure:
                self._connect_started = 0.0
                log.error("broker refused the connection: %s", reason_code)
                return
            self.limits = self._limits_from(properties)
            self._unacked_subscriptions = set()
            self.connected = True
            self.connects += 1
            self._connect_started = 0.0
            self._connected_at = time.monotonic()
            log.info("connected to MQTT broker %s:%d (MQTT %s; receive maximum %d, "
                     "maximum packet %d bytes)", self.config.host, self.config.port,
                     self.config.protocol, self.limits.receive_maximum,
                     self.limits.maximum_packet_size)
            self.handler.on_connected(self, self.limits)

    def _limits_from(self, properties: Properties | None) -> BrokerLimits:
        if properties is None or not self.v5:
            return BrokerLimits()
        return BrokerLimits(
            receive_maximum=getattr(properties, "ReceiveMaximum", 65535),
            maximum_packet_size=getattr(properties, "MaximumPacketSize", MQTT_MAX_PACKET),
        )

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        with log_and_continue(log, "error handling disconnect; continuing"):
            if self.connected and not self._stop.is_set():
                log.warning("disconnected from broker: %s", reason_code)

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with log_and_continue(log, "error handling a message on %s; continuing", message.topic):
            self.handler.on_message(self, message)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        with log_and_continue(log, "error handling PUBACK %d; continuing", mid):
            if reason_code.is_failure:
                log.warning("broker refused message %d: %s", mid, reason_code)
                return
            self.handler.on_puback(self, mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        with log_and_continue(log, "error handling SUBACK; continuing"):
            self._unacked_subscriptions.discard(mid)
            for rc in reason_codes:
                if rc.is_failure:
                    log.error("broker refused a subscription: %s", rc)
