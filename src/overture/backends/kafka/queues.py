"""The task topics: one per queue (``<namespace>.tasks.<queue>``), created on first use.

An engine's commit publishes each task attempt (``Batch.tasks``) to its queue's topic in
the batch's transaction, and a worker's claim subscribes to it; both ask
:class:`TaskTopics` first, so whichever comes first creates the topic (the cluster's
``auto.create.topics.enable`` is off on the dev broker, as it should be in production:
a typo must not create a topic). A new topic gets the events topic's partition count; one
that exists (say, made by an operator with more partitions for more workers) is used as
it is, so the partition count is always asked of the cluster, never assumed. A new topic
gets the events topic's ``retention.ms`` (``topics.wanted_configs``): attempts age out as
events do.

A request record is the ``overture.task.requested`` CloudEvent in *structured* mode (the
CloudEvents Kafka binding): the value is the event's JSON, ``content-type`` is
``application/cloudevents+json``, and the record key is the attempt id. Structured mode
keeps the request a worker reads identical to what ``TaskRecord.request`` holds (on every
backend a worker parses the same bytes with ``tasks.parse_request``). The partition is
the attempt id's (CRC-32, ``ports.partition_for``), which spreads one instance's
attempts, and so the load, over all of the queue's workers.
"""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from ... import protocol
from ...errors import BrokerUnavailable, ConfigError
from ...ports import partition_for
from .settings import KafkaSettings
from .topics import wanted_configs

STRUCTURED_HEADERS = [("content-type", b"application/cloudevents+json")]
"""The headers of a task request record (CloudEvents structured content mode)."""

_MAX_TOPIC = 249  # Kafka's limit on a topic name's length


def check_queue(settings: KafkaSettings, queue: object) -> str:
    """The topic of ``queue``, after checking the name can be part of a Kafka topic's.

    Raises:
        ConfigError: not a non-empty string of letters, digits, ``.``, ``_``, ``-``, or
            too long for a topic name.
    """
    problem = protocol.queue_problem(queue)
    if problem is not None:
        raise ConfigError(problem)
    assert isinstance(queue, str)
    topic = protocol.tasks_topic(settings.namespace, queue)
    if len(topic) > _MAX_TOPIC:
        raise ConfigError(
            f"task queue {queue!r} is too long: its topic {topic!r} has {len(topic)} "
            f"characters, over Kafka's {_MAX_TOPIC}"
        )
    return topic


class TaskTopics:
    """The task topics this process knows exist, with their partition counts.

    Shared by the engines of a process (every partition's committer) and by its task
    queue, so a topic is looked up (or created) once per process, not per commit.
    """

    def __init__(self, settings: KafkaSettings, partitions: int, *, timeout: float = 15.0) -> None:
        self._settings = settings
        self._partitions = partitions
        self._timeout = timeout
        self._known: dict[str, int] = {}
        self._lock = threading.Lock()

    def partitions(self, queue: str) -> int:
        """The partition count of ``queue``'s topic, creating the topic if it is missing.

        Raises:
            ConfigError: a queue name no topic can have, or the cluster refused to create it.
            BrokerUnavailable: the cluster did not answer in time.
        """
        topic = check_queue(self._settings, queue)
        with self._lock:
            known = self._known.get(topic)
            if known is None:
                known = self._known[topic] = self._ensure(topic)
            return known

    def place(self, queue: str, attempt_id: str) -> tuple[str, int]:
        """(topic, partition) of an attempt's request record."""
        count = self.partitions(queue)
        return protocol.tasks_topic(self._settings.namespace, queue), partition_for(
            attempt_id, count
        )

    def _ensure(self, topic: str) -> int:
        admin = AdminClient(self._settings.config())
        count = self._count(admin, topic)
        if count is not None:
            return count
        new = NewTopic(
            topic,
            num_partitions=self._partitions,
            replication_factor=self._settings.replication,
            config=wanted_configs(self._settings, topic),
        )
        future = admin.create_topics([new], request_timeout=self._timeout)[topic]
        try:
            future.result(self._timeout)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:  # else: lost a race, fine
                raise ConfigError(f"cannot create topic {topic}: {error.str()}") from exc
        count = self._count(admin, topic)
        # a topic created a moment ago may not be in the metadata yet: it has ours
        return self._partitions if count is None else count

    def _count(self, admin: AdminClient, topic: str) -> int | None:
        try:
            metadata = admin.list_topics(topic=topic, timeout=self._timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"Kafka at {self._settings.bootstrap} did not answer in {self._timeout:g}s: "
                f"{exc.args[0].str()}"
            ) from exc
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return None
        return len(found.partitions)
