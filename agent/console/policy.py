"""The console's policy on registrations: supervisor approval and the blocking rules.

Applied to every registration service the daemon builds, whether or not the console itself
listens: the rules protect the people being registered, not the page.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.console.config import ConsoleConfig
from agent.registration.gates import AwaitingApprovalGate, CentralUnreachedGate, FreeDiskGate
from agent.registration.service import RegistrationService
from agent.transport.durable_queue import DurableQueue


def apply_policy(config: ConsoleConfig, registrations: RegistrationService, queue: DurableQueue,
                 rewind: Callable[[], None]) -> None:
    registrations.approval_required = config.approval == "required"
    registrations.on_release = rewind
    gates = registrations.gates
    gates.add(AwaitingApprovalGate(registrations.approvals.count_awaiting, config.max_awaiting_approval))
    gates.add(CentralUnreachedGate(queue.oldest_waiting, config.max_days_unreached))
    gates.add(FreeDiskGate(queue.path.parent, config.min_free_disk_mb * 2**20))
