"""``ctx.call``: an attempt published per call, its result resolving the call, the call's
options over the task's definition, and the request a worker reads."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

import pytest

import overture as ov
from overture import protocol, tasks
from overture.backends import open_backend
from overture.backends.memory import MemoryBackend
from overture.codec import Codec
from overture.core import machine as m
from overture.ports import InstanceSnapshot
from overture.runtime.engine import Engine
from overture.testing import Harness, VirtualClock

from .conftest import Factory, Worker, stat, wall_deadline

START = 1_800_000_000.0  # the virtual clock's start


def call_app(name: str = "shipping.create", **options: Any) -> ov.App:
    app = ov.App("shop")

    @app.process(trigger="order.placed")
    async def fulfil(ctx: ov.Context, event: ov.Event) -> Any:
        shipment = await ctx.call(name, {"order": event.data["order"]}, **options)
        return {"shipment": shipment}

    return app


async def test_a_call_completes_with_the_workers_output(harness: Factory) -> None:
    async with harness(call_app()) as h:
        h.client.send("order.placed", {"order": "o1"}, key="o1")
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "running"  # work is being done on its behalf

        worker = Worker(h)
        attempt = worker.one()
        request, envelope = attempt.request, attempt.envelope
        assert (request.task, request.queue, request.input) == (
            "shipping.create",
            protocol.DEFAULT_QUEUE,
            {"order": "o1"},
        )
        assert (request.instance_id, request.seq, request.attempt) == (instance.id, 1, 1)
        assert request.idempotency_key == f"{instance.id}:1"
        assert request.deadline is None  # neither the call nor a definition set a timeout
        assert request.reply.partitionkey == "o1"
        row = h.backend.store.instance(instance.id)
        assert row is not None and request.reply.partition == row.partition
        assert envelope.id == protocol.task_attempt_id(instance.id, 1, 1) == attempt.claimed.id
        assert (envelope.type, envelope.subject, envelope.source) == (
            protocol.TASK_REQUESTED,
            "shipping.create",
            "/shop",
        )
        assert worker.claim() == []  # leased to this worker

        assert worker.complete(attempt, {"tracking": "T-1"}) == "accepted"
        await h.idle()
        instance = h.client.instance(instance.id)
        assert (instance.status, instance.result) == (
            "completed",
            {"shipment": {"tracking": "T-1"}},
        )
        # applying the result ended the attempt: nothing to claim, a second answer refused
        assert worker.claim() == []
        assert worker.complete(attempt, "again") == "ended"
        assert stat(h, "task_attempts") == 1


async def test_the_request_inherits_the_triggers_tenant_and_trace(harness: Factory) -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with harness(call_app()) as h:
        event = ov.Event.of("order.placed", {"order": "o1"}).with_attributes(
            tenant="acme", traceparent=trace, partitionkey="o1"
        )
        h.client.send(event)
        await h.idle()
        envelope = Worker(h).one().envelope
        assert envelope.tenant == "acme"
        assert envelope.traceparent is not None
        assert envelope.traceparent.split("-")[1] == trace.split("-")[1]  # same trace id
        assert envelope.traceparent != trace  # a span of its own


async def test_an_undefined_task_goes_to_the_default_queue_with_default_options(
    harness: Factory,
) -> None:
    async with harness(call_app("written.in.go")) as h:
        h.client.send("order.placed", {"order": "o1"}, key="o1")
        await h.idle()
        worker = Worker(h)
        attempt = worker.one()
        assert (attempt.request.task, attempt.request.queue) == ("written.in.go", "default")
        assert attempt.request.deadline is None
        # the default policy: three attempts
        for n in (1, 2):
            assert worker.fail(attempt, "Boom", f"attempt {n}") == "accepted"
            await h.advance(3600)
            attempt = worker.one()
            assert attempt.request.attempt == n + 1
        worker.fail(attempt, "Boom", "attempt 3")
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "failed"
        assert instance.error["type"] == "TaskFailed"
        assert "after 3 attempt(s): Boom: attempt 3" in instance.error["message"]


async def test_the_calls_options_override_the_task_definition(harness: Factory) -> None:
    app = call_app(queue="fast", timeout=timedelta(seconds=5))

    @app.task("shipping.create", queue="slow", timeout=timedelta(seconds=60))
    def create(data: Any) -> Any:
        return data

    async with harness(app) as h:
        h.client.send("order.placed", {"order": "o1"}, key="o1")
        await h.idle()
        worker = Worker(h)
        assert worker.claim(("slow", "default")) == []
        attempt = worker.one(("fast",))
        assert attempt.request.queue == "fast"
        assert wall_deadline(attempt.request.deadline, 5)


async def test_the_task_definition_gives_queue_timeout_and_retry(harness: Factory) -> None:
    app = call_app()

    @app.task(
        "shipping.create",
        queue="shipping",
        timeout=timedelta(seconds=60),
        retry=ov.Retry(max_attempts=1),
    )
    def create(data: Any) -> Any:
        return data

    async with harness(app) as h:
        h.client.send("order.placed", {"order": "o1"}, key="o1")
        await h.idle()
        worker = Worker(h)
        attempt = worker.one(("shipping",))
        assert wall_deadline(attempt.request.deadline, 60)
        worker.fail(attempt, "Boom", "no")  # retryable, but the definition allows one attempt
        await h.idle()
        assert h.client.instances()[0].status == "failed"


async def test_gather_of_several_calls_returns_outputs_in_argument_order(
    harness: Factory,
) -> None:
    app = ov.App("fanout")

    @app.process(trigger="go")
    async def fan(ctx: ov.Context, event: ov.Event) -> Any:
        return await ctx.gather(*(ctx.call("double", n) for n in (1, 2, 3)))

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        worker = Worker(h)
        attempts = worker.claim(expect=3)
        assert sorted(a.request.input for a in attempts) == [1, 2, 3]
        for attempt in reversed(attempts):  # answered in another order
            worker.complete(attempt, attempt.request.input * 2)
            await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", [2, 4, 6])


async def test_an_input_that_is_not_json_fails_at_the_call_and_publishes_nothing(
    harness: Factory,
) -> None:
    app = ov.App("bad-input")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> list[str]:
        refused = []
        for bad in (object(), float("nan"), {"n": 2**70}, [1, b"\xff"]):
            try:
                ctx.call("t", bad)
            except ov.EventValidationError as error:
                refused.append(str(error))
        for kwargs in ({"timeout": timedelta(0)}, {"queue": ""}, {"retry": 3}):
            try:
                ctx.call("t", 1, **kwargs)  # type: ignore[arg-type]
            except (ValueError, TypeError) as error:
                refused.append(str(error))
        return refused

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "completed"
        assert len(instance.result) == 7  # every one refused
        assert all(
            r.startswith("ctx.call('t'): the input is not JSON") for r in instance.result[:4]
        )
        assert "nan is not a JSON number" in instance.result[1]
        assert Worker(h).claim() == []
        assert stat(h, "task_attempts") == 0
        assert [e for e in h.client.journal(instance.id) if e["k"] == "cmd"] == []


async def test_forced_replay_of_a_finished_instance_publishes_nothing(harness: Factory) -> None:
    app = call_app()
    async with harness(app) as h:
        h.client.send("order.placed", {"order": "o1"}, key="o1")
        await h.idle()
        worker = Worker(h)
        worker.complete(worker.one(), "T-1")
        await h.idle()
        (instance,) = h.client.instances()
        journal = h.client.journal(instance.id)
        attempts = stat(h, "task_attempts")

        definition = app.definition(instance.process, instance.version)
        assert definition is not None
        replayed = m.Machine(definition.spec, instance.id, instance.key)
        assert replayed.replay(journal) == []  # no command: nothing scheduled again
        assert (replayed.status, replayed.result) == ("completed", {"shipment": "T-1"})
        assert stat(h, "task_attempts") == attempts
        assert worker.claim() == []


async def test_a_changed_task_name_on_replay_parks_the_instance() -> None:
    journal_app = call_app("a")
    spec = journal_app.definition("fulfil", 1).spec  # type: ignore[union-attr]
    machine = m.Machine(spec, "i1", "o1")
    event = ov.Event.of("order.placed", {"order": "o1"}).envelope
    (command,) = machine.start(event, START)
    assert isinstance(command, m.ScheduleTask) and command.call.task == "a"

    changed = call_app("b").definition("fulfil", 1).spec  # type: ignore[union-attr]
    replayed = m.Machine(changed, "i1", "o1")
    assert replayed.replay(machine.journal) == []
    assert replayed.status == "stuck"
    assert "call b" in (replayed.stuck_reason or "") and "call a" in (replayed.stuck_reason or "")


async def test_the_reply_names_the_instances_key_and_partition() -> None:
    url = "memory://four-partitions"
    open_backend(url, partitions=4)
    async with Harness(call_app(), url) as h:
        orders = [f"o{n}" for n in range(8)]
        for order in orders:
            h.client.send("order.placed", {"order": order}, key=order)
        await h.idle()
        worker = Worker(h)
        attempts = worker.claim(limit=20)
        partitions = set()
        for attempt in attempts:
            row = h.backend.store.instance(attempt.request.instance_id)
            assert row is not None
            assert attempt.request.reply.partitionkey == row.key
            assert attempt.request.reply.partition == row.partition
            partitions.add(row.partition)
            worker.complete(attempt, row.key)
        assert len(partitions) > 1  # the keys spread over the partitions
        await h.idle()
        results = {i.key: i.result for i in h.client.instances()}
        assert results == {order: {"shipment": order} for order in orders}


class CountingBackend(MemoryBackend):
    """``memory://`` counting the store's snapshot reads (one per read, however many
    instances it returns)."""

    def __init__(self) -> None:
        super().__init__("memory://counting", 1)
        self.reads: list[int] = []

    def snapshots(self, instance_ids: Collection[str]) -> dict[str, InstanceSnapshot]:
        self.reads.append(len(instance_ids))
        return super().snapshots(instance_ids)


async def test_the_callers_of_a_batchs_results_are_read_in_one_go() -> None:
    backend = CountingBackend()
    engine = Engine(call_app(), backend, clock=VirtualClock(), cache_size=0)
    client = ov.Client(backend)
    for n in range(5):
        client.send("order.placed", {"order": f"o{n}"}, key=f"o{n}")
    await engine.run_until_idle()
    codec = Codec(engine.app)
    for claimed in backend.tasks.claim(["default"], "w", 10, 30.0):
        envelope, request = tasks.parse_request(codec, claimed.request)
        backend.tasks.finish(claimed.id, "w", tasks.completed(codec, envelope, request, 1))
    backend.reads.clear()
    await engine.run_until_idle()
    assert backend.reads == [5]  # not five reads of one
    assert all(i.status == "completed" for i in client.instances())
    await engine.stop()
    client.close()


@pytest.mark.parametrize("queue", ["", "has space", "ünïcode", "x" * 201, "a/b"])
def test_a_queue_name_that_cannot_be_a_topic_is_refused_where_it_is_written(queue: str) -> None:
    """A queue is a Kafka topic: a name no topic can have fails at @app.task and at
    ctx.call on every backend, not later in a commit (where it would stop the loop)."""
    app = ov.App("q")
    with pytest.raises(ov.ConfigError, match="queue"):
        app.task("t", queue=queue)
    assert protocol.queue_problem("ok.queue_1-2") is None
    assert protocol.queue_problem(queue) is not None


def test_a_push_task_must_name_its_signing_secret() -> None:
    app = ov.App("p")
    with pytest.raises(ov.ConfigError, match="secret_env"):
        app.task("pay", url="http://127.0.0.1:1/pay")
    with pytest.raises(ov.ConfigError, match="push task"):
        app.task("pay", secret_env="S")
    app.task("pay", url="http://127.0.0.1:1/pay", secret_env="S")
    (definition,) = app.tasks
    assert (definition.url, definition.secret_env, definition.fn) == (
        "http://127.0.0.1:1/pay",
        "S",
        None,
    )
