"""The CloudEvents Kafka binding, record by record (pure: no broker). The same records
from a real producer into a running engine: ``tests/kafka/test_wire.py``."""

from __future__ import annotations

import struct

import orjson
import pytest

from overture.binding import from_record, to_binary
from overture.events import Envelope, decode, encode

HEADERS = (
    ("ce_specversion", b"1.0"),
    ("ce_id", b"e1"),
    ("ce_source", b"/x"),
    ("ce_type", b"order.placed"),
    ("content-type", b"application/json"),
)
STRUCTURED = orjson.dumps(
    {"specversion": "1.0", "id": "s1", "source": "/s", "type": "t.s", "data": {"n": 1}}
)


@pytest.mark.parametrize(
    "key",
    [struct.pack(">q", 1_733_000_000_000), struct.pack(">q", 42), b"\xff", b"a\x00b", b"\x7f"],
    ids=["long", "small-long", "not-utf8", "nul", "del"],
)
def test_a_key_that_is_not_text_leaves_the_event_keyless(key: bytes) -> None:
    read = from_record(key, HEADERS, b'{"n": 1}')
    assert read.error is None and read.key is None
    assert decode(read.value).partitionkey is None
    # ... unless the event names its partition key itself
    read = from_record(key, (*HEADERS, ("ce_partitionkey", b"o1")), b"{}")
    assert (read.key, decode(read.value).partitionkey) == ("o1", "o1")


def test_a_text_key_is_the_partition_key_in_either_mode() -> None:
    assert decode(from_record("é1".encode(), HEADERS, b"{}").value).partitionkey == "é1"
    read = from_record(b"k", (("content-type", b"application/cloudevents+json"),), STRUCTURED)
    assert read.key == "k" and decode(read.value).partitionkey == "k"
    # the rest of the value keeps its bytes: a number orjson would round stays as written
    big = STRUCTURED.replace(b'{"n":1}', b'{"n":123456789012345678901234567890}')
    assert from_record(b"k", (), big).value.endswith(b'{"n":123456789012345678901234567890}}')
    # an event's own partitionkey wins over the record key
    own = orjson.dumps({**orjson.loads(STRUCTURED), "partitionkey": "mine"})
    assert from_record(b"k", (), own) == (own, "mine", None)


def test_structured_mode_is_told_by_content_type_even_with_ce_headers() -> None:
    headers = (*HEADERS[:4], ("Content-Type", b"application/cloudevents+json; charset=utf-8"))
    read = from_record(None, headers, STRUCTURED)
    assert read.error is None and decode(read.value).type == "t.s"
    assert decode(read.value).data == {"n": 1}
    # without the structured content-type, the ce_ headers make it binary mode
    read = from_record(None, HEADERS, STRUCTURED)
    assert decode(read.value).type == "order.placed"
    assert decode(read.value).data == orjson.loads(STRUCTURED)


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        (
            (*HEADERS[:3], ("ce_type", b"a\xffb")),
            b"{}",
            "header 'ce_type' is not UTF-8 (byte 0xff at position 1)",
        ),
        (
            (*HEADERS[:4], ("content-type", b"\xfe")),
            b"{}",
            "header 'content-type' is not UTF-8 (byte 0xfe at position 0)",
        ),
        (
            HEADERS,
            b'{"n": 1,}',
            "the value is not JSON (content-type 'application/json'; Overture reads JSON "
            "data): trailing comma is not allowed: line 1 column 8 (char 7)",
        ),
        (HEADERS[:2], b"{}", "binary-mode record lacks header(s) ce_source, ce_type"),
        (
            (*HEADERS, ("ce_time", b"yesterday")),
            b"{}",
            "header 'ce_time' is not an RFC 3339 time: 'yesterday'",
        ),
        (
            (("content-type", b"application/cloudevents+avro"),),
            b"\x00",
            "structured-mode event format 'application/cloudevents+avro' is not supported "
            "(content-type 'application/cloudevents+avro'; Overture reads "
            "application/cloudevents+json)",
        ),
        ((), None, "the record has no value (a tombstone), so it holds no event"),
    ],
    ids=["ce-header", "content-type", "data", "missing", "time", "format", "tombstone"],
)
def test_what_cannot_be_read_says_where(
    headers: tuple[tuple[str, bytes | None], ...], value: bytes | None, reason: str
) -> None:
    read = from_record(b"\xff", headers, value)
    assert read.error == reason
    assert read.value == (value or b"")  # the value as it arrived, for the dead letter


def test_other_headers_may_hold_any_bytes_and_null_headers_are_no_attributes() -> None:
    headers = (*HEADERS, ("x-trace", b"\xff\x00"), ("ce_subject", None))
    read = from_record(b"k", headers, b"[1]")
    assert read.error is None
    envelope = decode(read.value)
    assert envelope.subject is None and envelope.data == [1]


def test_without_cloudevents_headers_a_content_type_is_the_datas() -> None:
    """The 1.x SDK's ``to_structured`` moves ``datacontenttype`` to ``content-type``."""
    read = from_record(None, (("content-type", b"application/vnd.x+json"),), STRUCTURED)
    assert decode(read.value).datacontenttype == "application/vnd.x+json"
    own = orjson.dumps({**orjson.loads(STRUCTURED), "datacontenttype": "text/json"})
    read = from_record(None, (("content-type", b"application/vnd.x+json"),), own)
    assert read.value == own and decode(read.value).datacontenttype == "text/json"


def test_header_names_are_read_in_any_case_and_unknown_extensions_are_kept_last() -> None:
    headers = (
        ("CE_SpecVersion", b"1.0"),
        ("ce_region", b"eu-1"),  # an extension Overture does not know
        ("Ce_Id", b"e1"),
        ("ce_source", b"/x"),
        ("CE_TYPE", b"order.placed"),
        ("ce_subject", b"o1"),
    )
    read = from_record(b"k", headers, b'{"n": 1}')
    assert read.error is None
    assert list(orjson.loads(read.value)) == [
        "specversion", "id", "source", "type", "subject", "partitionkey", "region", "data",
    ]  # fmt: skip
    envelope = decode(read.value)
    assert (envelope.id, envelope.type, envelope.subject) == ("e1", "order.placed", "o1")
    assert orjson.loads(read.value)["region"] == "eu-1"


def test_an_event_sent_in_binary_mode_reads_back_byte_for_byte() -> None:
    envelope = Envelope(type="order.placed", data={"n": 1}, subject="s", partitionkey="o1")
    structured = encode(envelope)
    key, headers, value = to_binary(structured)
    assert key is not None and headers is not None
    read = from_record(key.encode(), tuple(headers), value)
    assert read == (structured, "o1", None)
