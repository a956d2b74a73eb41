"""The Python names from before "broker" came to mean the Kafka server only still work:
``open_broker``, ``ports.Broker``, ``broker=`` on the clients and the harness (with a
``DeprecationWarning``), ``client.broker``."""

from __future__ import annotations

from pathlib import Path

import pytest

import overture as ov
from overture import ports
from overture.backends import open_backend, open_broker
from overture.testing import Harness


def test_the_old_module_names_are_the_new_ones() -> None:
    assert open_broker is open_backend
    assert ports.Broker is ports.Backend


async def test_broker_keyword_and_attribute_still_work(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with pytest.warns(DeprecationWarning, match=r"Client\(broker=...\) is now"):
        client = ov.Client(broker=url)
    with client, pytest.warns(DeprecationWarning, match="Client.broker is now"):
        assert client.broker is client.backend
    with pytest.warns(DeprecationWarning, match=r"AsyncClient\(broker=...\)"):
        async_client = ov.AsyncClient(broker=url)
    await async_client.close()
    with pytest.raises(TypeError, match="both backend and broker"):
        ov.Client(url, broker=url)
    app = ov.App("old")

    @app.process(trigger="go")
    async def proc(ctx: ov.Context, event: ov.Event) -> str:
        return "done"

    with pytest.warns(DeprecationWarning, match=r"Harness\(broker=...\)"):
        harness = Harness(app, broker=f"sqlite:///{tmp_path / 'h.db'}")
    async with harness as h:
        assert h.url.endswith("h.db")
        h.client.send("go", {}, key="k")
        await h.idle()
        assert h.client.instances()[0].status == "completed"
