"""The dashboard's store reads on every backend: ``find_instances`` (filters, search,
keyset pages), ``count_instances`` and ``instance_activity``, held to one reference."""

from __future__ import annotations

from dataclasses import replace

from overture.ports import ActivityRow, Batch, InstanceQuery, InstanceRow

from .conftest import Subject
from .test_conformance import row, views

STATUSES = ("running", "waiting", "completed", "failed", "cancelled", "stuck")


def rows() -> list[InstanceRow]:
    """60 instances: three processes, every status, shared and missing keys, ids with
    LIKE's wildcards, and ties in ``created`` (broken by id)."""
    out = []
    for n in range(60):
        created = 1000.0 + (n // 2) * 10.0  # two rows per created time
        out.append(
            row(
                f"{'ab%_' if n % 5 == 0 else 'ab'}{n:03d}",
                STATUSES[n % 6],
                process=("fulfil", "refund", "onboard")[n % 3],
                key=None if n % 7 == 0 else f"key-{n % 4}",
                created=created,
                updated=created + (n % 4) * 30.0,
            )
        )
    return out


def reference(every: list[InstanceRow], q: InstanceQuery) -> list[InstanceRow]:
    """What find_instances must return, from its definition."""
    picked = [
        r
        for r in every
        if (q.process is None or r.process == q.process)
        and (q.status is None or r.status == q.status)
        and (q.key is None or r.key == q.key)
        and (q.created_from is None or r.created >= q.created_from)
        and (q.created_to is None or r.created < q.created_to)
        and (q.search is None or r.id.startswith(q.search) or r.key == q.search)
        and (q.before is None or (r.created, r.id) < q.before)
    ]
    return sorted(picked, key=lambda r: (r.created, r.id), reverse=True)[: q.limit]


def committed(subject: Subject) -> list[InstanceRow]:
    every = rows()
    batch = Batch("g")
    for r in every:
        batch.instances[r.id] = replace(r)
    subject.engine().store.commit(batch)
    return every


def test_find_instances_filters_and_searches_like_the_reference(subject: Subject) -> None:
    every = committed(subject)
    queries = [
        InstanceQuery(limit=100),
        InstanceQuery(limit=5),
        InstanceQuery(process="refund", limit=100),
        InstanceQuery(status="waiting", limit=100),
        InstanceQuery(process="fulfil", status="running", limit=100),
        InstanceQuery(key="key-2", limit=100),
        InstanceQuery(created_from=1050.0, created_to=1120.0, limit=100),
        InstanceQuery(created_from=1050.0, status="completed", limit=3),
        InstanceQuery(search="ab%_", limit=100),  # wildcards are plain characters
        InstanceQuery(search="ab0", limit=100),
        InstanceQuery(search="ab01", limit=100),
        InstanceQuery(search="key-1", limit=100),  # a key
        InstanceQuery(search="zz", limit=100),
        InstanceQuery(before=(1100.0, "ab021"), limit=100),
        InstanceQuery(key="nobody", limit=100),
    ]
    for view in views(subject):
        for q in queries:
            assert view.find_instances(q) == reference(every, q), q


def test_keyset_pages_cover_every_row_once_newest_first(subject: Subject) -> None:
    every = committed(subject)
    for view in views(subject):
        for status in (None, "completed"):
            seen: list[InstanceRow] = []
            before = None
            while True:
                page = view.find_instances(InstanceQuery(status=status, before=before, limit=7))
                if not page:
                    break
                seen.extend(page)
                before = (page[-1].created, page[-1].id)
            assert seen == reference(every, InstanceQuery(status=status, limit=1000))


def test_counts_and_activity_are_counted_in_the_store(subject: Subject) -> None:
    every = committed(subject)
    want: dict[tuple[str, str], int] = {}
    for r in every:
        want[(r.process, r.status)] = want.get((r.process, r.status), 0) + 1
    since, width = 1100.0, 60.0
    buckets: dict[int, list[int]] = {}
    for r in every:
        if r.created >= since:
            buckets.setdefault(int((r.created - since) // width), [0, 0, 0])[0] += 1
        if r.updated >= since and r.status in ("completed", "failed"):
            column = 1 if r.status == "completed" else 2
            buckets.setdefault(int((r.updated - since) // width), [0, 0, 0])[column] += 1
    activity = [ActivityRow(since + b * width, *buckets[b]) for b in sorted(buckets)]
    for view in views(subject):
        assert view.count_instances() == want
        assert view.count_instances(process="refund") == {
            k: v for k, v in want.items() if k[0] == "refund"
        }
        assert view.instance_activity(since, width) == activity
