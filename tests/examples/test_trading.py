"""``examples/trading.py``: VWAP bars against a plain-Python reference, a confirmed move
halting the symbol (resumed by the timer or by the risk officer), a stray print cleared,
one move per burst (``skip_past_last``), on every backend; and its README command."""

from __future__ import annotations

import math
from pathlib import Path

import overture as ov
from examples import trading as tr

from ..test_examples import Factory
from .streamkit import T0, at, emitted, run_demo, settled


def session() -> list[tr.Trade]:
    """30 seconds, 5 trades a second per symbol: ACME near 100 (100.0, 100.1, 100.2 in
    turn), 101 in second 15, 102.6
    from second 16 on (a move, confirmed by its bar); GLOBEX at 50 with one stray print
    at 48.7 in second 20 (a move by one trade, not by the bar)."""
    out = []
    for tick in range(150):
        second = tick // 5
        acme = 100.0 + 0.1 * (tick % 3) if second < 15 else 101.0 if second == 15 else 102.6
        globex = 48.7 if tick == 102 else 50.0
        out.append(tr.Trade(symbol="ACME", price=acme, quantity=100 + tick % 7, at=at(tick / 5)))
        out.append(tr.Trade(symbol="GLOBEX", price=globex, quantity=40, at=at(tick / 5)))
    return out


def bars(trades: list[tr.Trade]) -> dict[tuple[str, float], tuple[float, int, int]]:
    """The reference: (symbol, second) -> (VWAP, volume, trades)."""
    out: dict[tuple[str, float], list[tr.Trade]] = {}
    for t in trades:
        out.setdefault((t.symbol, math.floor(t.at.timestamp())), []).append(t)
    return {
        key: (
            round(sum(t.price * t.quantity for t in ts) / sum(t.quantity for t in ts), 4),
            sum(t.quantity for t in ts),
            len(ts),
        )
        for key, ts in out.items()
    }


async def test_vwap_bars_a_confirmed_move_halts_and_a_stray_print_is_cleared(
    harness: Factory,
) -> None:
    trades = session()
    async with harness(tr.app) as h:
        h.client.send_many(t.envelope for t in trades)
        await h.idle()
        await h.advance(60)  # the idle clock closes the last bars

        got = {
            (b.symbol, b.start.timestamp()): (b.vwap, b.volume, b.trades)
            for b in emitted(h.client, tr.VwapUpdated)
            if isinstance(b, tr.VwapUpdated)
        }
        assert got == bars(trades)
        moves = sorted(
            (m.symbol, m.from_price, m.to_price, m.moved_at)
            for m in emitted(h.client, tr.PriceMoved)
            if isinstance(m, tr.PriceMoved)
        )
        assert moves == [("ACME", 100.1, 102.6, at(16)), ("GLOBEX", 50.0, 48.7, at(102 / 5))]

        checks = {i.key: i for i in h.client.instances(process="risk_check")}
        assert checks["GLOBEX"].status == "completed"
        assert checks["GLOBEX"].result == {
            "status": "cleared",
            "vwap": bars(trades)[("GLOBEX", T0 + 20)][0],
            "why": "the VWAP did not move",
        }
        assert checks["ACME"].status == "waiting"  # halted, waiting for the timer or officer
        [halted] = emitted(h.client, tr.TradingHalted)
        assert isinstance(halted, tr.TradingHalted)
        assert halted.symbol == "ACME" and "+2.50%" in halted.reason

        await h.advance(tr.HALT.total_seconds())
        acme = h.client.instance(checks["ACME"].id)
        assert (acme.status, acme.result) == (
            "completed",
            {"status": "resumed", "vwap": 102.6, "by": "timer"},
        )
        assert [e.data for e in map(lambda e: e.envelope, h.client.events(type="trading.resumed"))
                if e is not None] == [{"symbol": "ACME", "by": "timer"}]  # fmt: skip
        assert h.client.dead_letters() == []


async def test_the_risk_officer_resumes_a_halted_symbol(harness: Factory) -> None:
    async with harness(tr.app) as h:
        h.client.send_many(t.envelope for t in session() if t.symbol == "ACME")
        await h.idle()
        await h.advance(60)
        [check] = settled(lambda: h.client.instances(process="risk_check"))
        assert check.status == "waiting"
        h.client.send(tr.RiskCleared(symbol="ACME", officer="r.ortiz"))
        await h.idle()
        done = h.client.instance(check.id)
        assert done.result == {"status": "resumed", "vwap": 102.6, "by": "r.ortiz"}


async def test_a_burst_at_the_new_level_is_one_move(harness: Factory) -> None:
    # every ACME trade of the 15 seconds before the move could pair with a later trade at
    # 102.6: without skip_past_last that would be one price.moved (and one halt) each
    async with harness(tr.app) as h:
        h.client.send_many(t.envelope for t in session() if t.symbol == "ACME")
        await h.idle()
        assert len(emitted(h.client, tr.PriceMoved)) == 1
        assert len(h.client.instances(process="risk_check")) == 1


def test_the_readme_command(tmp_path: Path) -> None:
    db = tmp_path / "trading.db"
    out = run_demo("trading", db)
    assert "price.moved ACME: 100.2 -> 102.6 (+2.40%)" in out
    assert "price.moved GLOBEX: 50.0 -> 48.7 (-2.60%)" in out
    assert "risk check of ACME: {'status': 'resumed', 'vwap': 102.6, 'by': 'r.ortiz'}" in out
    assert "risk check of GLOBEX: {'status': 'cleared'" in out
    with ov.Client(f"sqlite:///{db}", app=tr.app) as client:
        assert len(emitted(client, tr.TradingHalted)) == 1
        # 40 seconds x 2 symbols; the last second's bars close by the idle clock about 1.5 s
        # later, maybe after the demo stopped
        assert 76 <= len(emitted(client, tr.VwapUpdated)) <= 80
        assert client.dead_letters() == []
