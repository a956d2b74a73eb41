"""What a user sees at the edges: ambiguous ids, listings cut at their limit, counts,
``--data @file`` / ``-``, keyless events,
and the ``--backend`` option (``--broker``: its hidden alias)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from cli_helpers import Invoke, failed, ok

import overture as ov
from overture.cli import cli
from overture.testing import Harness


@pytest.fixture
def url(sqlite_and_kafka_url: str) -> str:
    """These commands show the same on SQLite and Kafka."""
    return sqlite_and_kafka_url


def _keyless_app() -> ov.App:
    app = ov.App("ux")

    @app.process(trigger="thing.happened")
    async def note(ctx: ov.Context, event: ov.Event) -> str:
        await ctx.wait_for("thing.confirmed")
        return "ok"

    @app.process(trigger="other.happened")
    async def other(ctx: ov.Context, event: ov.Event) -> str:
        return "done"

    return app


async def test_an_ambiguous_prefix_lists_the_instances_it_matches(invoke: Invoke, url: str) -> None:
    async with Harness(_keyless_app(), url) as h:
        for n in range(3):
            h.client.send("thing.happened", {"n": n}, time=_same_time())
        await h.idle()
        ids = sorted(i.id for i in h.client.instances())
    # instance ids start with the trigger's time in milliseconds: same time, same prefix
    prefix = ids[0][:8]
    assert all(i.startswith(prefix) for i in ids)
    line = failed(invoke("show", prefix))
    assert f"{prefix!r} matches 3 instances" in line and "give more characters" in line
    assert all(i in line for i in ids)
    with ov.Client(url) as client, pytest.raises(ov.NotFound, match="matches 3 instances"):
        client.instance(prefix)
    assert "at least 6 characters" in failed(invoke("show", ids[0][:4]))
    assert ids[1] in ok(invoke("show", ids[1][-10:]))  # a unique suffix still works


def _same_time() -> object:
    from datetime import UTC, datetime

    return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def test_keyless_events_and_instances_say_keyless(invoke: Invoke, url: str) -> None:
    async with Harness(_keyless_app(), url) as h:
        h.client.send("thing.happened", {"n": 1})
        await h.idle()
        [instance] = h.client.instances()
        shown = ok(invoke("show", instance.id))
        assert "keyless)" in shown and "waiting for thing.confirmed keyless" in shown
        assert "None" not in shown
        assert "keyless" in ok(invoke("cancel", instance.id))
        assert all("None" not in text for _, text in h.client.timeline(instance.id))


async def test_listings_cut_at_their_limit_say_so_and_counts_are_one_command_away(
    invoke: Invoke, url: str
) -> None:
    async with Harness(_keyless_app(), url) as h:
        for n in range(5):
            h.client.send("thing.happened", {"n": n})
        h.client.send("other.happened", {})
        await h.idle()

    cut = invoke("instances", "--limit", "2")
    ok(cut)
    assert "showing 2 of 6 instances" in cut.stderr and "--limit" in cut.stderr
    assert "showing" not in invoke("instances").stderr
    cut = invoke("instances", "--limit", "2", "--status", "waiting")
    assert "showing 2 of 5 instances" in cut.stderr

    events = invoke("events", "--limit", "4")
    assert len(ok(events).splitlines()) > 4  # the table
    assert "showing 4 of about 6 events; use --limit" in events.stderr
    typed = invoke("events", "--limit", "2", "--type", "thing.happened", "--json")
    assert len(ok(typed).splitlines()) == 2
    assert "first 2 events of type 'thing.happened'; there are more" in typed.stderr
    assert "showing" not in invoke("events", "--limit", "6").stderr

    assert ok(invoke("instances", "--count", "--process", "nope")) == "no instances\n"
    table = ok(invoke("instances", "--count"))
    assert "waiting" in table and "completed" in table
    rows = [json.loads(line) for line in ok(invoke("instances", "--count", "--json")).splitlines()]
    assert rows == [
        {"process": "note", "status": "waiting", "count": 5},
        {"process": "other", "status": "completed", "count": 1},
    ]
    only = ok(invoke("instances", "--count", "--json", "--status", "completed"))
    assert [json.loads(line)["process"] for line in only.splitlines()] == ["other"]


def test_data_from_a_file_or_stdin(invoke: Invoke, url: str, tmp_path: Path) -> None:
    big = {"order_id": "o1", "blob": "x" * 300_000}  # one argument may hold 128 KiB (Linux)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big))
    first = ok(invoke("send", "big.one", "--data", f"@{path}", "--key", "o1")).strip()
    second = ok(invoke("send", "big.two", "--data", "-", "--key", "o1", input=json.dumps(big)))
    with ov.Client(url) as client:
        events = {e.envelope.type: e.envelope for e in client.events() if e.envelope}
    assert events["big.one"].id == first and events["big.one"].data == big
    assert events["big.two"].id == second.strip() and events["big.two"].data == big

    assert "No such file" in failed(invoke("send", "x", "--data", f"@{tmp_path / 'nope'}"))
    assert "needs a file name" in failed(invoke("send", "x", "--data", "@"))
    path.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in failed(invoke("send", "x", "--data", f"@{path}"))
    assert "not valid JSON" in failed(invoke("send", "x", "--data", "-", input="{oops"))


COMMANDS = [
    ["run"],
    ["send"],
    ["events"],
    ["instances"],
    ["show"],
    ["cancel"],
    ["dlq", "list"],
    ["dlq", "replay"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_backend_option_names_kafka(invoke: Invoke, command: list[str]) -> None:
    text = " ".join(ok(invoke(*command, "--help", backend=False)).split())
    assert "--backend" in text and "kafka://host:port" in text.replace("│ ", "")
    assert "--broker" not in text and "OVERTURE_BROKER" not in text  # the hidden alias


@pytest.mark.parametrize("spelling", ["--backend", "--broker", "-b"])
@pytest.mark.parametrize("joined", [False, True], ids=["URL", "=URL"])
def test_broker_is_still_accepted_for_backend(invoke: Invoke, spelling: str, joined: bool) -> None:
    """Scripts written before the rename keep working: ``--broker`` is ``--backend``."""
    ok(invoke("send", "x.y", "--key", "k", backend=True))
    option = [f"{spelling}={invoke.url}"] if joined and spelling != "-b" else [spelling, invoke.url]
    listed = ok(invoke("events", "--json", *option, backend=False))
    assert '"x.y"' in listed


@pytest.mark.parametrize("variable", ["OVERTURE_BACKEND", "OVERTURE_BROKER"])
def test_the_backend_comes_from_either_environment_variable(invoke: Invoke, variable: str) -> None:
    ok(invoke("send", "x.y", "--key", "k"))
    result = invoke.runner.invoke(cli, ["events", "--json"], env={variable: invoke.url})
    assert '"x.y"' in ok(result)


def test_overture_backend_wins_over_overture_broker(invoke: Invoke, tmp_path: Path) -> None:
    ok(invoke("send", "x.y", "--key", "k"))
    elsewhere = f"sqlite:///{tmp_path / 'missing.db'}"
    env = {"OVERTURE_BACKEND": invoke.url, "OVERTURE_BROKER": elsewhere}
    assert '"x.y"' in ok(invoke.runner.invoke(cli, ["events", "--json"], env=env))


def test_the_orders_example_is_unaffected(orders: ModuleType) -> None:
    assert orders.app.waiters("payment.received") == ["fulfil_order"]
