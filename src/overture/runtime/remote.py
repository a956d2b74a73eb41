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

from collections.abc import Iterable
from typing import Any

from .. import protocol
from ..codec import Codec
from ..core import machine as m
from ..core.correlation import WaitIndex
from ..events import Envelope
from ..ports import Log, NewRecord, WaitRow, partition_for
from .batch import Live, PendingBatch


class RemoteWaits:
    """Engine mixin: subscriptions to, and deliveries from, other partitions."""

    codec: Codec
    _owned: frozenset[int] | None
    _log: Log
    _pending: PendingBatch | None
    _waits: WaitIndex

    def _live(self, iid: str, now: float, *, stuck: bool = False) -> Live | None:
        raise NotImplementedError

    def _drive(self, live: Live, commands: Iterable[m.Command], now: float) -> None:
        raise NotImplementedError

    def _buffer(
        self, iid: str, envelope: Envelope, value: bytes, position: str, now: float
    ) -> None:
        raise NotImplementedError

    def _clear_wait(self, wait: WaitRow, *, withdraw: bool = True) -> None:
        raise NotImplementedError

    def _foreign(self, key: str | None) -> bool:
        """Whether events with this key arrive on a partition this engine does not own."""
        owned = self._owned
        return (
            owned is not None
            and key is not None
            and partition_for(key, self._log.partitions) not in owned
        )

    def _send_control(
        self, kind: str, data: dict[str, Any], *, key: str | None, partition: int | None = None
    ) -> None:
        assert self._pending is not None
        envelope = Envelope(type=kind, data=data, partitionkey=key)
        self._pending.batch.appends.append(
            NewRecord(
                key, self.codec.to_bytes(envelope), None, kind, partition=partition, internal=True
            )
        )

    def _subscribe_remote(self, wait: WaitRow, home: int) -> None:
        data = {
            "instance_id": wait.instance_id,
            "seq": wait.seq,
            "type": wait.event_type,
            "home": home,
        }
        self._send_control(protocol.WAIT_SUBSCRIBE, data, key=wait.key)

    def _unsubscribe_remote(self, wait: WaitRow) -> None:
        data = {"instance_id": wait.instance_id, "seq": wait.seq, "type": wait.event_type}
        self._send_control(protocol.WAIT_UNSUBSCRIBE, data, key=wait.key)

    def _forward(self, wait: WaitRow, envelope: Envelope) -> None:
        """Send an event to the partition of the instance that waits for it."""
        assert self._pending is not None and wait.home is not None
        self._pending.waits.delete(wait)
        self._waits.remove(wait)
        event = self.codec.to_journal(envelope)
        data = {"instance_id": wait.instance_id, "seq": wait.seq, "event": event}
        self._send_control(protocol.WAIT_DELIVER, data, key=None, partition=wait.home)

    def _remote_control(self, message: protocol.Control, envelope: Envelope, now: float) -> bool:
        """Handle a validated subscription control message; False if it is not one.

        Raises:
            MalformedEvent: a delivery whose event is not a CloudEvent (the caller
                dead-letters the control event).
        """
        pending = self._pending
        assert pending is not None
        if isinstance(message, protocol.WaitSubscribe):
            wait = WaitRow(
                message.type, envelope.partitionkey, message.instance_id, message.seq, message.home
            )
            pending.waits.put(wait, True, created=True)
            self._waits.add(wait)
        elif isinstance(message, protocol.WaitUnsubscribe):
            for wait in self._waits.of_instance(message.instance_id):
                if wait.seq == message.seq and wait.home is not None:
                    pending.waits.delete(wait)
                    self._waits.remove(wait)
        elif isinstance(message, protocol.WaitDeliver):
            event = self.codec.from_dict(message.event)  # before anything changes
            for wait in self._waits.of_instance(message.instance_id):
                if wait.seq == message.seq and wait.home is None:
                    self._deliver(wait, event, now)
        else:
            return False
        return True

    def _deliver(self, wait: WaitRow, event: Envelope, now: float) -> None:
        live = self._live(wait.instance_id, now, stuck=True)
        if live is None:
            return
        if live.machine.stuck_reason is not None:
            self._buffer(wait.instance_id, event, self.codec.to_bytes(event), f"r:{event.id}", now)
            return  # parked: the wait stays, and the event waits with it
        self._clear_wait(wait, withdraw=False)
        value = self.codec.to_journal(event)
        self._drive(live, live.machine.resolve(wait.seq, now, ok=value), now)
