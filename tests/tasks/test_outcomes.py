"""What the engine does with an attempt's result, its deadline and its instance's end:
retries after a durable backoff, final failures, timeouts, stale and duplicate results,
cancellation, and a restart with an attempt outstanding."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import orjson
import pytest

import overture as ov
from overture import protocol
from overture.runtime.observer import Observer

from .conftest import Factory, Worker, stat, wall_deadline

RETRY = ov.Retry(max_attempts=3, initial_interval=timedelta(seconds=10), backoff=2.0)


def app_with(
    *,
    retry: ov.Retry = RETRY,
    timeout: timedelta | None = None,
    compensate: list[str] | None = None,
) -> ov.App:
    app = ov.App("pay")

    def undo(order: str) -> None:
        assert compensate is not None
        compensate.append(order)

    @app.process(trigger="order.placed")
    async def charge(ctx: ov.Context, event: ov.Event) -> Any:
        order = event.data["order"]
        if compensate is not None:
            await ctx.step(lambda: None, name="reserve")
            ctx.compensate_with(undo, order)
        return await ctx.call("card.charge", {"order": order}, retry=retry, timeout=timeout)

    return app


class Dropped(Observer):
    def __init__(self) -> None:
        self.dropped: list[tuple[str, str]] = []
        self.calls: list[tuple[str, str, int]] = []

    def task_published(self, task: str, attempt: int, instance_id: str, queue: str) -> None:
        self.calls.append(("published", task, attempt))

    def task_finished(self, task: str, attempt: int, instance_id: str, outcome: str) -> None:
        self.calls.append((outcome, task, attempt))

    def task_result_dropped(self, attempt_id: str, reason: str) -> None:
        self.dropped.append((attempt_id, reason))


async def start(h: Any) -> str:
    h.client.send("order.placed", {"order": "o1"}, key="o1")
    await h.idle()
    (instance,) = h.client.instances()
    return str(instance.id)


async def test_a_failed_attempt_is_retried_after_its_backoff(harness: Factory) -> None:
    observer = Dropped()
    async with harness(app_with(), observer=observer) as h:
        iid = await start(h)
        worker = Worker(h)
        first = worker.one()
        assert worker.fail(first, "Declined", "try later") == "accepted"
        await h.idle()
        assert worker.claim() == []  # waiting for the backoff: nothing published yet
        await h.advance(9.9)
        assert worker.claim() == []
        await h.advance(0.1)  # 10 s after the failure
        second = worker.one()
        assert second.request.attempt == 2
        assert second.claimed.id == protocol.task_attempt_id(iid, 1, 2)
        assert second.request.idempotency_key == first.request.idempotency_key == f"{iid}:1"
        assert worker.complete(first, "late") == "ended"  # the failed attempt is over

        worker.fail(second, "Declined", "again")
        await h.idle()
        await h.advance(19.9)  # the backoff doubled
        assert worker.claim() == []
        await h.advance(0.1)
        third = worker.one()
        assert third.request.attempt == 3
        worker.complete(third, {"charged": 10})
        await h.idle()
        instance = h.client.instance(iid)
        assert (instance.status, instance.result) == ("completed", {"charged": 10})
        retries = [e for e in h.client.journal(iid) if e["k"] == "retry"]
        assert [(e["a"], e["err"]["type"]) for e in retries] == [(1, "Declined"), (2, "Declined")]
        assert [(c[0], c[2]) for c in observer.calls] == [
            ("published", 1),
            ("failed", 1),
            ("published", 2),
            ("failed", 2),
            ("published", 3),
            ("completed", 3),
        ]


async def test_a_non_retryable_failure_fails_the_call_and_compensation_runs(
    harness: Factory,
) -> None:
    undone: list[str] = []
    async with harness(app_with(compensate=undone)) as h:
        iid = await start(h)
        worker = Worker(h)
        first = worker.one()
        worker.fail(first, "CardExpired", "expired 2020-01", retryable=False)
        await h.idle()
        instance = h.client.instance(iid)
        assert instance.status == "failed"
        assert instance.error["type"] == "TaskFailed"
        assert instance.error["message"] == (
            "task 'card.charge' failed after 1 attempt(s): CardExpired: expired 2020-01"
        )
        assert undone == ["o1"]
        assert worker.claim() == []


async def test_task_failed_carries_the_workers_error(harness: Factory) -> None:
    app = ov.App("catch")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        try:
            return await ctx.call("t", retry=ov.Retry(max_attempts=2))
        except ov.TaskFailed as error:
            return [error.task, error.error_type, error.message, error.attempts]

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        worker = Worker(h)
        worker.fail(worker.one(), "Boom", "first")
        await h.advance(1)
        worker.fail(worker.one(), "Boom", "second")  # retryable, but the last attempt
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.result == ["t", "Boom", "second", 2]


class CardDeclined(Exception):
    pass


@pytest.mark.parametrize("error_type", ["CardDeclined", "TerminalError"])
async def test_the_policys_non_retryable_names_end_the_call(
    harness: Factory, error_type: str
) -> None:
    retry = ov.Retry(max_attempts=5, non_retryable=(CardDeclined,))
    async with harness(app_with(retry=retry)) as h:
        iid = await start(h)
        worker = Worker(h)
        worker.fail(worker.one(), error_type, "no")  # the worker said retryable
        await h.idle()
        instance = h.client.instance(iid)
        assert instance.status == "failed"
        assert f"after 1 attempt(s): {error_type}: no" in instance.error["message"]


async def test_an_attempt_past_its_deadline_is_given_up_and_retried(harness: Factory) -> None:
    observer = Dropped()
    async with harness(app_with(timeout=timedelta(seconds=30)), observer=observer) as h:
        iid = await start(h)
        worker = Worker(h)
        first = worker.one()
        assert wall_deadline(first.request.deadline, 30)
        await h.advance(29.9)
        assert worker.claim() == []  # still running
        await h.advance(0.1)  # the deadline: given up, retried after 10 s
        retries = [e for e in h.client.journal(iid) if e["k"] == "retry"]
        assert [(e["a"], e["err"]["type"]) for e in retries] == [(1, "TaskTimeout")]
        assert worker.complete(first, "too late") == worker.late  # refused (Kafka: dropped)
        await h.advance(10)
        second = worker.one()
        assert second.request.attempt == 2
        assert wall_deadline(second.request.deadline, 30)  # a fresh deadline

        # a late result that reaches the log anyway (a worker writing to it directly,
        # as on Kafka) changes nothing
        late = worker.completed(first, "too late")
        h.backend.log.append([late])
        await h.idle()
        assert h.client.instance(iid).status == "running"
        # (on Kafka the first late result reached the log too, and was dropped the same way)
        drops = 1 if worker.sees_ends else 2
        assert stat(h, "task_results_dropped") == drops
        assert (
            observer.dropped
            == [(first.claimed.id, "not the current attempt of an open call")] * drops
        )

        worker.complete(second, "in time")
        await h.idle()
        assert h.client.instance(iid).result == "in time"
        assert observer.calls == [
            ("published", "card.charge", 1),
            ("timed out", "card.charge", 1),
            ("published", "card.charge", 2),
            ("completed", "card.charge", 2),
        ]


async def test_a_result_the_engine_sees_after_the_deadline_is_dropped(harness: Factory) -> None:
    async with harness(app_with(timeout=timedelta(seconds=30))) as h:
        iid = await start(h)
        worker = Worker(h)
        first = worker.one()
        worker.complete(first, "in time for the worker")  # appended, not yet routed
        h.clock.advance(31)  # the engine reads it only after the deadline
        await h.idle()
        instance = h.client.instance(iid)
        assert instance.status == "running"
        assert stat(h, "task_results_dropped") == 1
        await h.advance(10)
        assert worker.one().request.attempt == 2


async def test_the_last_attempt_timing_out_fails_the_call(harness: Factory) -> None:
    app = app_with(retry=ov.Retry(max_attempts=1), timeout=timedelta(seconds=5))
    async with harness(app) as h:
        iid = await start(h)
        attempt = Worker(h).one()
        await h.advance(5)
        instance = h.client.instance(iid)
        assert instance.status == "failed"
        assert "TaskTimeout: attempt 1 got no result by its deadline" in instance.error["message"]
        late = Worker(h)
        assert late.complete(attempt, "late") == late.late
        await h.idle()
        assert h.client.instance(iid).status == "failed"  # (on Kafka: dropped)


async def test_a_duplicate_result_is_ignored(harness: Factory) -> None:
    async with harness(app_with()) as h:
        iid = await start(h)
        worker = Worker(h)
        attempt = worker.one()
        result = worker.completed(attempt, "first")
        assert worker.finish(attempt, result) == "accepted"
        # the same result again, past the log's dedup of event ids (a log without it
        # delivers it twice), and another worker's different answer: both in the same
        # batch as the first
        h.backend.log.append([dataclasses.replace(result, event_id=None)])
        other = worker.completed(attempt, "second")
        h.backend.log.append([dataclasses.replace(other, event_id=None)])
        assert worker.finish(attempt, other) == "ended"
        await h.idle()
        instance = h.client.instance(iid)
        assert (instance.status, instance.result) == ("completed", "first")
        (applied,) = [e for e in h.client.journal(iid) if e["k"] == "res"]
        assert applied["ok"] == "first"
        assert stat(h, "task_results_dropped") == 2
        assert h.client.dead_letters() == []  # dropped, not dead-lettered: expected noise


async def test_cancel_ends_the_instances_attempts(harness: Factory) -> None:
    app = ov.App("two")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        return await ctx.gather(ctx.call("a"), ctx.call("b"))

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        worker = Worker(h)
        held = worker.claim(limit=1, expect=1)  # one claimed, one still waiting for a worker
        assert len(held) == 1
        h.client.cancel(instance.id)
        await h.idle()
        assert h.client.instance(instance.id).status == "cancelled"
        left = worker.claim(expect=0 if worker.sees_ends else 1)
        if worker.sees_ends:
            assert left == []  # the unclaimed attempt is withdrawn
        else:  # no end marker on Kafka: it stays claimable until its deadline
            assert [a.request.task for a in left] == ["b" if held[0].request.task == "a" else "a"]
        assert worker.complete(held[0], "late") == worker.late
        for attempt in left:
            assert worker.complete(attempt, "late") == "accepted"
        await h.idle()
        assert h.client.instance(instance.id).status == "cancelled"  # the results dropped
        assert h.backend.store.work() == []


async def test_an_attempt_outstanding_across_a_restart_is_applied_once(harness: Factory) -> None:
    async with harness(app_with(timeout=timedelta(seconds=30))) as h:
        iid = await start(h)
        worker = Worker(h)
        attempt = worker.one()
        await h.host.abandon()  # the engine crashes; the worker finishes while it is down
        result = worker.completed(attempt, "charged")
        assert worker.finish(attempt, result) == "accepted"
        await h.restart()
        h.backend.log.append([dataclasses.replace(result, event_id=None)])  # and a duplicate
        await h.idle()
        instance = h.client.instance(iid)
        assert (instance.status, instance.result) == ("completed", "charged")
        assert len([e for e in h.client.journal(iid) if e["k"] == "res"]) == 1
        assert stat(h, "task_results_dropped") == 1


async def test_a_restart_keeps_the_attempt_published_and_its_deadline(harness: Factory) -> None:
    async with harness(app_with(timeout=timedelta(seconds=30))) as h:
        iid = await start(h)
        worker = Worker(h)
        first = worker.one()
        await h.restart()
        assert worker.claim() == []  # still leased to the worker: not published again
        await h.advance(30)  # the reloaded row still gives it up at its deadline
        await h.advance(10)
        second = worker.one()
        assert second.request.attempt == 2
        await h.restart()  # and a restart with the next attempt open
        worker.complete(second, "done")
        await h.idle()
        assert h.client.instance(iid).result == "done"
        assert worker.complete(first, "late") == worker.late


async def test_a_restart_during_the_backoff_keeps_the_schedule(harness: Factory) -> None:
    async with harness(app_with()) as h:
        iid = await start(h)
        worker = Worker(h)
        worker.fail(worker.one(), "Declined", "later")
        await h.idle()
        await h.restart()
        await h.advance(5)
        assert worker.claim() == []
        await h.advance(5)  # due 10 s after the failure, as before the restart
        attempt = worker.one()
        assert attempt.request.attempt == 2
        worker.complete(attempt, "ok")
        await h.idle()
        assert h.client.instance(iid).result == "ok"


async def test_bad_task_messages_on_the_log_are_dead_lettered(harness: Factory) -> None:
    async with harness(app_with()) as h:
        iid = await start(h)
        worker = Worker(h)
        attempt = worker.one()
        # (the client refuses both; any producer could write them)
        for n, (kind, data) in enumerate(
            [
                (protocol.TASK_COMPLETED, {"instance_id": iid, "attempt": 1}),
                (protocol.TASK_REQUESTED, attempt.envelope.data),
            ]
        ):
            event = {"specversion": "1.0", "id": f"bad-{n}", "source": "x", "type": kind}
            h.client.send_raw(orjson.dumps({**event, "partitionkey": "o1", "data": data}))
        await h.idle()
        letters = {letter.event_type: letter.reason for letter in h.client.dead_letters()}
        assert "has invalid data: seq: Field required" in letters[protocol.TASK_COMPLETED]
        assert "on the log it runs nothing" in letters[protocol.TASK_REQUESTED]
        assert h.client.instance(iid).status == "running"  # untouched
        worker.complete(attempt, "fine")
        await h.idle()
        assert h.client.instance(iid).result == "fine"


async def test_a_result_for_a_parked_instance_runs_the_attempt_again_once_fixed(
    harness: Factory,
) -> None:
    def versioned(task: str) -> ov.App:
        app = ov.App("parked")

        @app.process(trigger="go")
        async def proc(ctx: ov.Context, event: ov.Event) -> Any:
            return await ctx.call(task)

        return app

    async with harness(versioned("a")) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        first = Worker(h).one()
    async with harness(versioned("b")) as h:  # code that diverges
        worker = Worker(h)
        if worker.fetches:
            # a Kafka queue takes results only for attempts its process fetched: the
            # first holder left without one, so the attempt is delivered again
            again = worker.one()
            assert again.claimed.id == first.claimed.id
        assert worker.complete(first, "lost") == "accepted"
        await h.idle()
        (instance,) = h.client.instances()
        assert instance.status == "stuck"
        assert stat(h, "task_results_dropped") == 1
        assert worker.claim() == []
    async with harness(versioned("a")) as h:  # fixed: the call runs again
        worker = Worker(h)
        await h.idle()
        again = worker.one()
        assert (again.request.task, again.request.attempt) == ("a", 2)
        worker.complete(again, "kept")
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "kept")


async def test_an_instance_that_completes_ends_the_calls_it_left_open(harness: Factory) -> None:
    app = ov.App("left-open")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        ctx.call("slow")  # never awaited
        return str(await ctx.call("fast", queue="fast"))

    async with harness(app) as h:
        h.client.send("go", {})  # keyless: the reply has no partition key
        await h.idle()
        worker = Worker(h)
        slow = worker.one()
        fast = worker.one(("fast",))
        assert fast.request.reply.partitionkey is None
        worker.complete(fast, "quick")
        await h.idle()
        (instance,) = h.client.instances()
        assert (instance.status, instance.result) == ("completed", "quick")
        assert worker.complete(slow, "late") == worker.late
        assert h.backend.store.work() == []


async def test_cancel_withdraws_the_attempts_before_the_compensations_end(
    harness: Factory,
) -> None:
    undo_attempts: list[int] = []

    def undo() -> None:
        undo_attempts.append(1)
        if len(undo_attempts) == 1:
            raise RuntimeError("not yet")

    app = ov.App("slow-undo")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> Any:
        ctx.compensate_with(undo)
        return await ctx.call("t")

    async with harness(app) as h:
        h.client.send("go", {}, key="k")
        await h.idle()
        worker = Worker(h)
        held = worker.one()
        h.client.cancel(held.request.instance_id)
        await h.idle()  # the compensation failed once: it is retried after a backoff
        assert undo_attempts == [1]
        assert h.client.instance(held.request.instance_id).status != "cancelled"
        assert worker.complete(held, "late") == worker.late  # withdrawn already
        await h.advance(60)
        assert h.client.instance(held.request.instance_id).status == "cancelled"


async def test_a_result_for_an_instance_nobody_holds_is_dead_lettered(harness: Factory) -> None:
    async with harness(app_with()) as h:
        iid = await start(h)
        worker = Worker(h)
        attempt = worker.one()
        stray = worker.completed(attempt, "lost")
        data = {**orjson.loads(stray.value)}
        data["data"] = {**data["data"], "instance_id": "no-such-instance"}
        data["id"] = "stray-result"
        h.client.send_raw(orjson.dumps(data), key="o1")
        await h.idle()
        (letter,) = h.client.dead_letters()
        assert "task result: no instance 'no-such-instance' here" in letter.reason
        assert stat(h, "task_results_dropped") == 0
        worker.finish(attempt, worker.completed(attempt, "found"))
        await h.idle()
        assert h.client.instance(iid).result == "found"
