"""A task result goes to the partition its request names (the embedded task queues).

A worker builds an attempt's result with the request's ``reply`` (``tasks.completed`` /
``failed``): appended to ``reply.partition``, it reaches the partition that holds the
instance, behind the instance's other inputs. A result appended anywhere else (a worker
of another language that got the field wrong, a result built for another request) would
reach a partition whose engine does not hold the instance; the queue refuses it instead,
before anything is written.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import MalformedEvent
from ..ports import NewRecord


def reply_partition(request: bytes) -> int | None:
    """The ``reply.partition`` of a stored ``overture.task.requested`` CloudEvent (None
    when its data cannot be read without the app's codec: a payload codec encoded it)."""
    try:
        event: Any = orjson.loads(request)
    except orjson.JSONDecodeError:
        return None
    data = event.get("data") if isinstance(event, dict) else None
    reply = data.get("reply") if isinstance(data, dict) else None
    partition = reply.get("partition") if isinstance(reply, dict) else None
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        return None
    return partition


def check_reply(task_id: str, request: bytes | None, result: NewRecord) -> None:
    """Refuse ``result`` unless it goes to the partition ``request`` names.

    Raises:
        MalformedEvent: the result names another partition, or none.
    """
    if request is None:
        return  # an attempt never published: finish answers "unknown"
    wanted = reply_partition(request)
    if wanted is not None and result.partition != wanted:
        raise MalformedEvent(
            f"the result of task attempt {task_id!r} must go to partition {wanted} (its "
            f"request's reply.partition), not "
            f"{'no partition' if result.partition is None else result.partition}; "
            "nothing was written"
        )
