"""The wire names clients, engines and other-language workers share live in protocol.py."""

from __future__ import annotations

import re
from pathlib import Path

from overture import protocol
from overture.backends.kafka.settings import parse
from overture.binding import from_record, to_binary
from overture.events import Envelope, encode

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "overture"


def test_the_kafka_names_of_a_namespace_come_from_the_protocol() -> None:
    settings = parse("kafka://127.0.0.1:9092/shop")
    assert settings.events_topic == protocol.events_topic("shop") == "shop.events"
    assert settings.internal_topic == protocol.internal_topic("shop") == "shop.internal"
    assert settings.changelog_topic == protocol.changelog_topic("shop") == "shop.changelog"
    assert settings.group == protocol.engine_group("shop") == "shop.engine"


def test_the_extensions_travel_under_their_protocol_names() -> None:
    assert protocol.EXTENSIONS == ("partitionkey", "traceparent", "tenant")
    envelope = Envelope(
        type="order.placed",
        data={"n": 1},
        partitionkey="o1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tenant="acme",
    )
    structured = encode(envelope)
    _key, headers, value = to_binary(structured)
    names = {name for name, _ in headers or ()}
    assert {f"ce_{name}" for name in protocol.EXTENSIONS} <= names
    assert from_record(b"o1", tuple(headers or ()), value).value == structured


def test_no_other_module_spells_the_wire_names() -> None:
    """Spelled once: a second spelling is where a rename (or a typo) drifts apart."""
    names = "|".join(protocol.EXTENSIONS)
    topics = r"""\}\.(?:events|internal|changelog|engine)["']"""  # f"{namespace}.events"
    spelled = re.compile(rf"""["'](?:{names})["']|{topics}""")
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "protocol.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert found == []
