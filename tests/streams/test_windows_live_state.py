"""The streams runtime's fast paths keep every guarantee: a key's live state (changed in
place, event after event) is encoded once per batch and committed with that batch's
offsets; an event a window cannot fold changes nothing; a record read by processes and
windows is decoded once; emitted ids are the documented UUIDv5."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from benchmarks.streams import make_app  # the benchmark's job: Count per key, 10 s windows

import overture as ov
from overture.codec import Codec
from overture.ports import Batch
from overture.streams.runtime import _EMIT_NAMESPACE, derived_id, namespace
from overture.testing import Harness

T0 = 1_800_000_000.0


def view(user: str, at: float) -> ov.Event:
    return ov.Event.of("view", {"user": user, "at": T0 + at})


def committed(h: Harness) -> list[Batch]:
    """Every batch the harness's store commits from now on."""
    store = h.backend.store  # type: ignore[attr-defined]
    batches: list[Batch] = []
    commit = store.commit

    def keep(batch: Batch) -> None:
        batches.append(batch)
        commit(batch)

    store.commit = keep
    return batches


async def test_a_key_changed_by_many_events_is_written_once_with_the_offsets(
    tmp_path: Path,
) -> None:
    async with Harness(make_app(), f"sqlite:///{tmp_path / 'l.db'}") as h:
        batches = committed(h)
        h.client.send_many(h.client.envelope(view("u1", t)) for t in (1, 2, 3, 4, 5))
        h.client.send_many(h.client.envelope(view("u2", t)) for t in (1, 2))
        await h.idle()
        stream = [b for b in batches if b.offsets]
        assert len(stream) == 1, "the seven events are one batch"
        entries = {k: v for (ns, k), v in stream[0].state.items() if ns == namespace("counts")}
        assert sorted(k for k in entries if k.startswith(b"k:")) == [
            b"k:00000:u1",
            b"k:00000:u2",
        ]
        counts = {k: orjson.loads(v)["w"][0][2] for k, v in entries.items() if b":u" in k}
        assert counts == {b"k:00000:u1": [5], b"k:00000:u2": [2]}
        assert [w.values for w in h.client.window("counts", "u1")] == [{"n": 5}]


async def test_state_changed_in_place_in_a_later_batch_survives_a_restart(
    tmp_path: Path,
) -> None:
    async with Harness(make_app(), f"sqlite:///{tmp_path / 'l.db'}") as h:
        h.client.send(view("u1", 1))
        await h.idle()
        h.client.send(view("u1", 2))  # the same live document, changed in place
        await h.idle()
        h.client.send(view("u1", 3))
        await h.idle()
        assert [w.values for w in h.client.window("counts", "u1")] == [{"n": 3}]
        await h.restart()
        h.client.send(view("u1", 4))
        h.client.send(view("u2", 12))  # closes [0, 10)
        await h.idle()
        results = [e.envelope.data for e in h.client.events(type="counted") if e.envelope]
        assert results == [{"user": "u1", "n": 4}]


def reduce_app(seen: list[ov.WindowResult]) -> ov.App:
    app = ov.App("reduce")

    def collect(acc: list[Any], value: Any) -> list[Any]:
        acc.append(value)  # changes its accumulator, then may raise
        if value == "bad":
            raise ValueError("bad value")
        return acc

    @app.window(
        source="view",
        key="user",
        window=ov.Hopping(timedelta(seconds=10), timedelta(seconds=5)),
        aggregate={"seen": ov.Reduce([], collect, "what")},
        time_field="at",
        idle=None,
    )
    def views(result: ov.WindowResult) -> None:
        seen.append(result)

    return app


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_reduce_that_raises_half_way_leaves_the_windows_as_they_were(
    backend: str, tmp_path: Path
) -> None:
    url = "memory://r" if backend == "memory" else f"sqlite:///{tmp_path / 'r.db'}"
    seen: list[ov.WindowResult] = []
    async with Harness(reduce_app(seen), url) as h:

        def event(what: str, at: float) -> ov.Event:
            return ov.Event.of("view", {"user": "u1", "what": what, "at": T0 + at})

        h.client.send_many(
            [h.client.envelope(event(w, t)) for w, t in [("a", 6), ("bad", 7), ("b", 8)]]
        )
        await h.idle()
        assert [d.reason for d in h.client.dead_letters()] == [
            "stream 'views': Reduce's function failed: ValueError('bad value')"
        ]
        assert [w.values for w in h.client.window("views", "u1")] == [
            {"seen": ["a", "b"]},
            {"seen": ["a", "b"]},
        ]


async def test_an_integer_sum_past_64_bits_is_dead_lettered_and_changes_nothing() -> None:
    app = ov.App("sums")

    @app.window(
        source="view",
        key="user",
        window=ov.Tumbling(timedelta(seconds=10)),
        aggregate={"total": ov.Sum("amount"), "n": ov.Count()},
        time_field="at",
        idle=None,
    )
    def totals(result: ov.WindowResult) -> None:
        return None

    big = 3 * 2**62  # fits in 64 bits; two of them do not
    async with Harness(app) as h:
        h.client.send_many(
            h.client.envelope(ov.Event.of("view", {"user": "u1", "amount": big, "at": T0 + t}))
            for t in (1, 2)
        )
        await h.idle()
        assert [d.reason for d in h.client.dead_letters()] == [
            f"stream 'totals': the sum {2 * big} no longer fits in 64 bits"
        ]
        assert [w.values for w in h.client.window("totals", "u1")] == [{"total": big, "n": 1}]


class CountingCodec(Codec):
    def __init__(self, app: ov.App) -> None:
        super().__init__(app)
        self.decoded = 0

    def from_bytes(self, raw: bytes) -> Any:
        self.decoded += 1
        return super().from_bytes(raw)


async def test_a_record_the_router_and_a_window_read_is_decoded_once(tmp_path: Path) -> None:
    app = make_app()
    codec = CountingCodec(app)
    async with Harness(app, f"sqlite:///{tmp_path / 'd.db'}", codec=codec) as h:
        h.client.send_many(h.client.envelope(view(f"u{i}", i)) for i in range(5))
        before = codec.decoded
        await h.idle()
        assert [w.values for w in h.client.window("counts", "u3")] == [{"n": 1}]
        # five records consumed: the router (every record) and the window share each
        # one's envelope
        assert codec.decoded - before == 5


def test_emitted_ids_are_uuid5_of_the_emit_namespace() -> None:
    for name in ("app:op:key:1.0:2.0:0", "ü" * 40, ""):
        assert derived_id(name) == str(uuid.uuid5(_EMIT_NAMESPACE, name))
