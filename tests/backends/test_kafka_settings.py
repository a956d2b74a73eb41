"""Parsing ``kafka://`` URLs and client properties (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overture.backends.kafka.settings import client_properties, parse
from overture.binding import from_record, to_binary
from overture.errors import ConfigError
from overture.events import Envelope, decode, encode


def test_url_parts_and_defaults() -> None:
    s = parse("kafka://a:9092,b:9093/shop?partitions=12&replication=3")
    assert (s.bootstrap, s.namespace, s.partitions, s.replication) == (
        "a:9092,b:9093",
        "shop",
        12,
        3,
    )
    assert (s.events_topic, s.internal_topic, s.changelog_topic, s.group) == (
        "shop.events",
        "shop.internal",
        "shop.changelog",
        "shop.engine",
    )
    plain = parse("kafka://localhost:9092")
    assert (plain.namespace, plain.partitions, plain.replication) == ("overture", None, 1)


@pytest.mark.parametrize(
    "url",
    [
        "kafka://",
        "kafka://host/shop",
        "kafka://host:/shop",
        "kafka://h:1/bad name",
        "kafka://h:1/x?partitions=0",
        "kafka://h:1/x?partitions=many",
        "kafka://h:1/x?colour=blue",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse(url)


def test_client_properties_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "client.properties"
    config.write_text(
        "# TLS and SASL\nsecurity.protocol=SASL_SSL\nsasl.mechanism = PLAIN\n\nclient.id=file\n"
    )
    props = client_properties(
        {
            "OVERTURE_KAFKA_CONFIG": str(config),
            "OVERTURE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "OVERTURE_KAFKA_DIR": ".overture/kafka",  # the dev broker's, not a property
            "UNRELATED": "x",
        }
    )
    assert props == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",  # the environment wins
        "client.id": "file",
    }
    config.write_text("no equals sign\n")
    with pytest.raises(ConfigError, match="expected key=value"):
        client_properties({"OVERTURE_KAFKA_CONFIG": str(config)})
    with pytest.raises(ConfigError, match="cannot read"):
        client_properties({"OVERTURE_KAFKA_CONFIG": str(tmp_path / "missing")})


def test_binary_mode_round_trip_is_byte_for_byte() -> None:
    event = Envelope(
        type="order.placed",
        data={"order_id": "o1", "n": [1, 2]},
        subject="orders",
        partitionkey="o1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tenant="acme",
    )
    key, headers, value = to_binary(encode(event))
    assert key == "o1" and value == b'{"order_id":"o1","n":[1,2]}'
    assert dict(headers or [])["ce_type"] == b"order.placed"
    assert from_record(b"o1", tuple(headers or ()), value) == (encode(event), "o1", None)
    # the record key stands in for a missing ce_partitionkey header
    without = [(n, v) for n, v in headers or [] if n != "ce_partitionkey"]
    assert decode(from_record(b"other", tuple(without), value).value).partitionkey == "other"
    # bytes that are no binary-mode event pass through (and are dead-lettered later)
    assert to_binary(b"{garbage") == (None, None, b"{garbage")
    assert from_record(None, None, b"{garbage") == (b"{garbage", None, None)
