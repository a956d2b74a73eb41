"""A full embedded database is a clear :class:`~overture.StorageFull`, with nothing written.

``PRAGMA max_page_count`` makes SQLite report SQLITE_FULL, the same result code a full
disk gives, without filling the machine's disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import overture as ov


def test_send_on_a_full_database_raises_storage_full_and_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'full.db'}"
    with ov.Client(url) as client:
        client.send("order.placed", {"n": 0})
        conn = client.backend._conn  # type: ignore[attr-defined]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(ov.StorageFull, match=r"is full.*nothing was written"):
            client.send("order.placed", {"blob": "x" * 50_000})
        assert not conn.in_transaction  # the connection is usable again
        conn.execute("PRAGMA max_page_count=1073741823")
        client.send("order.placed", {"n": 2})
        assert [e.envelope.data for e in client.events() if e.envelope] == [{"n": 0}, {"n": 2}]
