"""The running kiosk as the components that serve people see it.

Remote commands, telemetry, remote control and the local API need a few facts about the
running agent (its config, its queue's figures, its devices, its connection) and a few
actions (capture, retry rejected captures, purge, reload). They get them through
``Runtime``, a Protocol, instead of reaching through the daemon's ``Agent`` into its parts:
so they never import the daemon (which imports them), and the daemon stays free to change
how it wires its parts. ``agent.daemon.Agent`` implements it.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.errors import TransientError

if TYPE_CHECKING:
    # Named in annotations only. Imported here they would load OpenCV and numpy (through the
    # capture and registration services) into every command that imports a component
    # speaking to the Runtime: most of a second of `kiosk-agent --help`, more on a Pi.
    from agent.capture.service import CaptureOutcome
    from agent.capture.workers import DeviceWorker
    from agent.clock.watch import ClockWatch
    from agent.config import AgentConfig
    from agent.registration.central_status import CentralStatus
    from agent.registration.service import RegistrationService
    from agent.transport.durable_queue import QueueStats
    from agent.transport.events import EventBus
    from agent.transport.protocol import Topics
    from agent.transport.uplink import Uplink


class Restarting(TransientError):
    """The agent is swapping its components (config.set, restart): ask again shortly."""

    def __init__(self) -> None:
        super().__init__("the agent is restarting its components; try again shortly")


@dataclass(frozen=True)
class Connection:
    """The MQTT connection as support sees it."""

    connected: bool
    #: Connections made since start, minus the first.
    reconnects: int
    #: The client certificate's end of validity, when TLS uses one.
    cert_expires_at: datetime | None


@dataclass(frozen=True)
class Deliveries:
    """Captures handed to the broker, acknowledged by the receiver and refused by it, since start."""

    published: int
    acknowledged: int
    rejected: int


@dataclass(frozen=True)
class CaptureCounts:
    captured_today: int
    refused: int


class Runtime(Protocol):
    """What commands, telemetry, remote control and the local API may ask of the running agent.

    Attributes are read-only to them; ``config`` changes only through ``reload``.
    """

    config: AgentConfig
    #: The file ``config.set`` and ``restart`` reload from; None: remote config changes refused.
    config_path: Path | None
    #: Wall-clock start time (0 before start).
    started_at: float
    #: True while ``reload`` swaps the components: callers answer "busy" meanwhile.
    reloading: bool
    events: EventBus
    topics: Topics
    #: The agent's judgement of its own clock (chrony, timedatectl, GNSS, the release date).
    clock: ClockWatch

    def device_workers(self) -> Mapping[str, DeviceWorker]:
        """The enabled devices by name; each worker runs one action at a time on its device."""
        ...

    def registration_service(self) -> RegistrationService | None:
        """Registration sessions; None while the components are (re)starting."""
        ...

    def central_status(self) -> CentralStatus | None:
        """What the central side says of the kiosk's registrations; None while (re)starting."""
        ...

    def take_capture(self, device: str, position: int) -> Future[CaptureOutcome]:
        """One capture from ``device``, with the person's retries, committed to the queue.
        Raises Restarting while the components are being swapped."""
        ...

    def queue_stats(self) -> QueueStats | None:
        ...

    def retry_rejected(self) -> int:
        """Put captures the receiver refused back in line; how many."""
        ...

    def purge_queue(self, states: tuple[str, ...]) -> tuple[int, int]:
        """Delete queued captures in these states for good; (items, bytes)."""
        ...

    def connection(self) -> Connection:
        ...

    def deliveries(self) -> Deliveries | None:
        ...

    def capture_counts(self) -> CaptureCounts:
        ...

    def uplink(self) -> Uplink | None:
        """The cellular limits on captures (cap, windows, budget), when delivery runs."""
        ...

    def recent_audit(self, limit: int) -> list[dict[str, Any]]:
        """The newest remote-command audit entries, newest first."""
        ...

    def reload(self, config: AgentConfig, connect_within_s: float) -> bool:
        """Restart the components with ``config``; True when MQTT connects within the time."""
        ...
