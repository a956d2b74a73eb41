"""Review of round 1: what a Python task function returns reaches the caller as it was,
or the call fails saying why, as for a step's result and ``ctx.call``'s input."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pydantic
import pytest

import overture as ov
from overture import protocol, tasks
from overture.codec import Codec
from overture.events import Envelope
from overture.testing import Harness
from overture.worker import Worker


class Receipt(pydantic.BaseModel):
    order: str
    cents: int


def outputs_app() -> ov.App:
    app = ov.App("outputs")

    @app.task("t.model")
    def model(value: Any) -> Receipt:
        return Receipt(order=value, cents=4599)

    @app.task("t.nan")
    def nan(value: Any) -> Any:
        return {"ratio": float("nan")}

    @app.process(trigger="go")
    async def go(ctx: ov.Context, event: ov.Event) -> Any:
        try:
            return await ctx.call(event.data["task"], "o-1")
        except ov.TaskFailed as error:
            return {"failed": error.error_type, "message": str(error)}

    return app


async def _outcome(task: str) -> Any:
    app = outputs_app()
    async with Harness(app, f"memory://{uuid.uuid4().hex}") as h:
        h.client.send("go", {"task": task}, key="k")
        await h.idle()
        (instance,) = h.client.instances()
        async with Worker(app, h.backend, poll=0.05) as worker:
            async with asyncio.timeout(10):
                await worker.wait_finished(1)
        await h.idle()
        done = h.client.instance(instance.id)
        assert done.status == "completed"
        return done.result


async def test_a_task_returning_a_model_completes_with_its_json() -> None:
    # a step's result and ctx.call's input convert models and dataclasses; so must this
    assert await _outcome("t.model") == {"order": "o-1", "cents": 4599}


async def test_a_task_returning_nan_fails_instead_of_completing_with_null() -> None:
    result = await _outcome("t.nan")
    assert result["failed"] == "TypeError"
    assert "output.ratio" in result["message"] and "NaN" in result["message"]


@pytest.mark.parametrize(
    "output", [float("nan"), float("inf"), {"n": [2**64]}], ids=["nan", "inf", "int65"]
)
def test_completed_refuses_output_json_would_not_carry_exactly(output: Any) -> None:
    app = ov.App("a")
    codec = Codec(app)
    request = {
        "task": "t",
        "queue": "default",
        "instance_id": "i",
        "seq": 1,
        "attempt": 1,
        "idempotency_key": "i:1",
        "reply": {"partitionkey": "k", "partition": 0},
    }
    raw = codec.to_bytes(
        Envelope(type=protocol.TASK_REQUESTED, data=request, id="task:i:1:1", source="/a")
    )
    envelope, message = tasks.parse_request(codec, raw)
    with pytest.raises(ov.EventValidationError, match="output"):
        tasks.completed(codec, envelope, message, output)
