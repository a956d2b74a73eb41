"""Pure unit tests of the correlation index and the work queue."""

from __future__ import annotations

from overture.core.correlation import WaitIndex
from overture.core.timers import WorkQueue
from overture.ports import WaitRow, WorkRow


def test_waits_match_by_type_and_key_in_registration_order() -> None:
    a = WaitRow("payment.received", "o1", "i1", 3)
    b = WaitRow("payment.received", "o1", "i2", 1)
    c = WaitRow("payment.received", "o2", "i3", 1)
    d = WaitRow("order.cancelled", "o1", "i1", 4)
    index = WaitIndex([a, b, c, d])
    assert index.match("payment.received", "o1") == [a, b]
    assert index.match("payment.received", "o3") == []
    assert index.of_instance("i1") == [a, d]
    assert index.remove(a)
    assert not index.remove(a)
    assert index.match("payment.received", "o1") == [b]
    assert index.of_instance("i1") == [d]
    assert len(index) == 3


def test_none_keys_correlate_only_with_none() -> None:
    index = WaitIndex([WaitRow("tick", None, "i1", 1)])
    assert index.match("tick", None) == [WaitRow("tick", None, "i1", 1)]
    assert index.match("tick", "x") == []


def test_work_queue_yields_due_rows_in_order_and_skips_stale_entries() -> None:
    q = WorkQueue([WorkRow("t2", "timer", 20.0), WorkRow("t1", "timer", 10.0, instance_id="i")])
    q.put(WorkRow("s1", "step", 15.0, instance_id="i"))
    assert q.next_due() == 10.0
    assert [r.id for r in q.pop_due(16.0)] == ["t1", "s1"]
    # popped rows stay until removed, but are not yielded again
    assert [r.id for r in q.pop_due(16.0)] == []
    assert q.of_instance("i") == ["s1", "t1"]
    q.remove("t1")
    assert q.of_instance("i") == ["s1"]
    q.put(WorkRow("s1", "step", 30.0, attempt=2, instance_id="i"))  # a retry, rescheduled
    assert [r.id for r in q.pop_due(25.0)] == ["t2"]
    assert [(r.id, r.attempt) for r in q.pop_due(30.0)] == [("s1", 2)]


def test_busy_rows_are_not_due() -> None:
    q = WorkQueue([WorkRow("a", "step", 1.0), WorkRow("b", "step", 2.0)])
    assert q.next_due(busy={"a"}) == 2.0
    assert [r.id for r in q.pop_due(5.0, busy={"a"})] == ["b"]
