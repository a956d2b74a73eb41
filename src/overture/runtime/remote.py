"""Waits for a key that another partition owns (engines that own only some partitions).

An instance lives on the partition of its own key, but ``ctx.wait_for(T, key=K)`` may
name a key whose events arrive on another partition. On a backend where one engine owns
every partition (memory, SQLite) nothing special happens. On Kafka, where each engine owns
one partition, the instance's engine keeps the wait (and its timeout) and sends a
subscription to the partition of ``K``; that partition's engine stores it as a wait whose
``home`` is the instance's partition, and when a matching event arrives it forwards a copy
home, where the wait is resolved. All three messages are control events on the internal
topic, each committed atomically with the batch that caused it, so a crash cannot lose or
double one. A wait that ends first (timeout, cancel, finish) withdraws its subscription;
a forwarded event that arrives after its wait ended is dropped.

As everywhere, an event for another key counts only from the moment its wait is known
where the event arrives (here: once the subscription reached the key's partition).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .. import protocol
from ..codec import Codec
from ..core.correlation import WaitIndex
from ..events import Envelope
from ..ports import NewRecord, WaitRow, partition_for
from .staging import Stage


class RemoteWaits:
    """Subscriptions to, and deliveries from, other partitions.

    Args:
        waits: the engine's wait index (shared with :class:`~.waits.Waits`): the
            subscriptions other partitions sent here live in it with their ``home``.
        partitions: how many partitions the log has.
        owned: the key partitions this engine owns; None: all of them (then no key is
            foreign and this object never sends anything).
    """

    def __init__(
        self, codec: Codec, waits: WaitIndex, partitions: int, owned: Collection[int] | None
    ) -> None:
        self._codec = codec
        self._waits = waits
        self._partitions = partitions
        self._owned = None if owned is None else frozenset(p % partitions for p in owned)

    def foreign(self, key: str | None) -> bool:
        """Whether events with this key arrive on a partition this engine does not own."""
        owned = self._owned
        return (
            owned is not None
            and key is not None
            and partition_for(key, self._partitions) not in owned
        )

    def subscribe(self, stage: Stage, wait: WaitRow, home: int) -> None:
        """Ask the partition of the wait's key to forward matching events ``home``."""
        data = {
            "instance_id": wait.instance_id,
            "seq": wait.seq,
            "type": wait.event_type,
            "home": home,
        }
        self._send(stage, protocol.WAIT_SUBSCRIBE, data, key=wait.key)

    def unsubscribe(self, stage: Stage, wait: WaitRow) -> None:
        """Withdraw the subscription of a wait that ended here first."""
        data = {"instance_id": wait.instance_id, "seq": wait.seq, "type": wait.event_type}
        self._send(stage, protocol.WAIT_UNSUBSCRIBE, data, key=wait.key)

    def forward(self, stage: Stage, wait: WaitRow, envelope: Envelope) -> None:
        """Send an event to the partition of the instance that waits for it (a
        subscription is used once: its wait ends with this event)."""
        assert wait.home is not None  # only subscriptions from elsewhere are forwarded
        stage.waits.delete(wait)
        self._waits.remove(wait)
        data = {
            "instance_id": wait.instance_id,
            "seq": wait.seq,
            "event": self._codec.to_journal(envelope),
        }
        # carrying the event's trace context: the delivery continues the event's trace
        self._send(
            stage,
            protocol.WAIT_DELIVER,
            data,
            key=None,
            partition=wait.home,
            traceparent=envelope.traceparent,
        )

    def receive(
        self, stage: Stage, message: protocol.Control, envelope: Envelope
    ) -> list[tuple[WaitRow, Envelope]] | None:
        """Apply a validated subscription message; None if ``message`` is not one.

        Returns:
            For a delivery, the local waits it resolves with the delivered event (for the
            caller to hand to their instances); otherwise an empty list.

        Raises:
            MalformedEvent: a delivery whose event is not a CloudEvent (the caller
                dead-letters the control event).
        """
        if isinstance(message, protocol.WaitSubscribe):
            wait = WaitRow(
                message.type, envelope.partitionkey, message.instance_id, message.seq, message.home
            )
            stage.waits.put(wait, True, created=True)
            self._waits.add(wait)
            return []
        if isinstance(message, protocol.WaitUnsubscribe):
            for wait in self._waits.of_instance(message.instance_id):
                if wait.seq == message.seq and wait.home is not None:
                    stage.waits.delete(wait)
                    self._waits.remove(wait)
            return []
        if isinstance(message, protocol.WaitDeliver):
            event = self._codec.from_dict(message.event)  # before anything changes
            return [
                (wait, event)
                for wait in self._waits.of_instance(message.instance_id)
                if wait.seq == message.seq and wait.home is None
            ]
        return None

    def _send(
        self,
        stage: Stage,
        kind: str,
        data: dict[str, Any],
        *,
        key: str | None,
        partition: int | None = None,
        traceparent: str | None = None,
    ) -> None:
        envelope = Envelope(type=kind, data=data, partitionkey=key, traceparent=traceparent)
        value = self._codec.to_bytes(envelope)
        stage.batch.appends.append(
            NewRecord(key, value, None, kind, partition=partition, internal=True)
        )
