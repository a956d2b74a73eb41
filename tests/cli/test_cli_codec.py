"""An app's payload codec is used by the CLI: ``overture send --app`` writes encoded data."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import Invoke, ok

import overture as ov

SHOP = """
import zlib

import overture as ov


class Zlib:
    name = "zlib"

    def encode(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decode(self, data: bytes) -> bytes:
        return zlib.decompress(data)


class OrderPlaced(ov.Event, type="order.placed", key="order_id"):
    order_id: str
    secret: str


app = ov.App("coded", payload_codec=Zlib())
app.event(OrderPlaced)
"""


def test_send_with_the_app_encodes_the_data_with_its_payload_codec(
    invoke: Invoke, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "coded_shop_cli.py").write_text(SHOP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = '{"order_id": "o1", "secret": "swordfish-cli"}'
    ok(invoke("send", "order.placed", "--data", data, "--app", "coded_shop_cli:app"))
    with ov.Client(url) as client:
        (record,) = client.backend.log.read(0, 0, 10)
        assert b"swordfish-cli" not in record.value
        assert b'"payloadcodec":"zlib"' in record.value
    # a reader without the app's codec says why it cannot show the event
    shown = ok(invoke("events", "--json"))
    assert "payload codec 'zlib'" in shown
