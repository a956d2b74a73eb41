"""Trading: per-symbol VWAP bars, price moves, and a risk check that can halt a symbol.

- ``vwap``: a 1-second tumbling window per symbol over the executed trades: volume,
  trade count, high, low and the volume-weighted average price (``Reduce`` sums
  price x quantity), emitted as ``vwap.updated`` when the second closes.
- ``price_move``: a trade more than :data:`MOVE` (2%) away from an earlier trade of the
  symbol within 10 seconds emits ``price.moved`` (a pattern; ``skip_past_last`` makes a
  burst of trades at the new level one move, not one per earlier trade).
- ``risk_check``: a process per move. It waits for the VWAP bar of the second the move
  happened in: a single stray print (a fat finger) leaves the bar near the old price and
  the check clears the move; a bar confirming the move halts the symbol (a durable step
  calling the exchange gateway, ``trading.halted``) for :data:`HALT`, or until a risk
  officer sends ``risk.cleared``, then resumes it (``trading.resumed``). Each move gets a
  check of its own: a second move of a halted symbol halts it again and resumes it after
  its own :data:`HALT` (a real gateway's halt and resume are idempotent calls).

Event time is each trade's ``at`` (the exchange's timestamp), with half a second of grace.

Run it, on a fresh SQLite file, with a real ``overture run`` (the demo sends 40 seconds of
two symbols' trades: ACME jumps from about 100 to 102.6, GLOBEX has one stray print)::

    python -m examples.trading

or run the engine yourself: ``overture run examples.trading:app``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field

import overture as ov

from . import streamdemo

log = logging.getLogger("examples.trading")

MOVE = 0.02
"""A price move larger than this fraction within :data:`MOVE_WITHIN` is checked."""
MOVE_WITHIN = timedelta(seconds=10)
HALT = timedelta(minutes=5)
"""How long a confirmed move halts the symbol unless the risk officer clears it."""
CONFIRM_TIMEOUT = timedelta(seconds=30)
"""How long the check waits for the VWAP bar of the move's second."""
GRACE = timedelta(milliseconds=500)


def _now() -> datetime:
    return datetime.now(UTC)


class Trade(ov.Event, type="trade.executed", key="symbol"):
    symbol: str
    price: float
    quantity: int
    at: datetime = Field(default_factory=_now)


class VwapUpdated(ov.Event, type="vwap.updated", key="symbol"):
    symbol: str
    start: datetime
    end: datetime
    vwap: float
    volume: int
    trades: int
    high: float
    low: float


class PriceMoved(ov.Event, type="price.moved", key="symbol"):
    symbol: str
    from_price: float
    to_price: float
    change: float
    """(to - from) / from."""
    moved_at: datetime


class RiskCleared(ov.Event, type="risk.cleared", key="symbol"):
    symbol: str
    officer: str


class TradingHalted(ov.Event, type="trading.halted", key="symbol"):
    symbol: str
    reason: str


class TradingResumed(ov.Event, type="trading.resumed", key="symbol"):
    symbol: str
    by: str


app = ov.App("trading")


def _notional(acc: float, trade: dict[str, Any]) -> float:
    return float(acc + trade["price"] * trade["quantity"])


@app.window(
    source=Trade,
    key="symbol",
    window=ov.Tumbling(timedelta(seconds=1)),
    aggregate={
        "notional": ov.Reduce(0.0, _notional),
        "volume": ov.Sum("quantity"),
        "trades": ov.Count(),
        "high": ov.Max("price"),
        "low": ov.Min("price"),
    },
    grace=GRACE,
    time_field="at",
)
def vwap(result: ov.WindowResult) -> VwapUpdated:
    v = result.values
    return VwapUpdated(
        symbol=result.key,
        start=result.start,
        end=result.end,
        vwap=round(v["notional"] / v["volume"], 4),
        volume=v["volume"],
        trades=v["trades"],
        high=v["high"],
        low=v["low"],
    )


def moved(trade: Trade, match: ov.Match) -> bool:
    first = match["trade.executed"][0]
    assert isinstance(first, Trade)
    return abs(trade.price - first.price) / first.price > MOVE


@app.pattern(
    ov.begin(Trade)
    .followed_by(Trade, where=moved, name="moved")
    .within(MOVE_WITHIN)
    .skip_past_last(),
    key="symbol",
    grace=GRACE,
    time_field="at",
)
def price_move(match: ov.Match) -> PriceMoved:
    first, last = match["trade.executed"][0], match["moved"][0]
    assert isinstance(first, Trade) and isinstance(last, Trade)
    return PriceMoved(
        symbol=match.key,
        from_price=first.price,
        to_price=last.price,
        change=round((last.price - first.price) / first.price, 6),
        moved_at=last.at,
    )


def halt(symbol: str, reason: str) -> None:
    """Ask the exchange gateway to halt the symbol (a real one calls it with
    ``ctx.idempotency_key``, so a retried step halts once)."""
    log.warning("HALT %s: %s", symbol, reason)


def resume(symbol: str) -> None:
    log.warning("RESUME %s", symbol)


async def confirming_bar(ctx: ov.Context, move: PriceMoved) -> VwapUpdated | None:
    """The VWAP bar of the second the move happened in (earlier bars are skipped), or
    None if it did not come within :data:`CONFIRM_TIMEOUT`."""
    while True:
        try:
            bar = await ctx.wait_for(VwapUpdated, timeout=CONFIRM_TIMEOUT)
        except ov.WaitTimeout:
            return None
        if bar.end > move.moved_at:
            return bar


@app.process(
    trigger=PriceMoved,
    waits=[VwapUpdated, RiskCleared],
    emits=[TradingHalted, TradingResumed],
)
async def risk_check(ctx: ov.Context, move: PriceMoved) -> dict[str, Any]:
    bar = await confirming_bar(ctx, move)
    if bar is None:
        return {"status": "cleared", "why": "no VWAP bar to confirm the move"}
    confirmed = abs(bar.vwap - move.from_price) / move.from_price
    if confirmed <= MOVE:
        return {"status": "cleared", "vwap": bar.vwap, "why": "the VWAP did not move"}
    reason = f"{move.change:+.2%} within {MOVE_WITHIN.seconds}s, VWAP {bar.vwap}"
    await ctx.step(halt, move.symbol, reason)
    ctx.emit(TradingHalted(symbol=move.symbol, reason=reason))
    cleared = ctx.wait_for(RiskCleared)
    timer = ctx.sleep(HALT)
    if await ctx.first(cleared, timer) == 0:
        ctx.abandon(timer)
        by = (await cleared).officer
    else:
        ctx.abandon(cleared)
        by = "timer"
    await ctx.step(resume, move.symbol)
    ctx.emit(TradingResumed(symbol=move.symbol, by=by))
    return {"status": "resumed", "vwap": bar.vwap, "by": by}


# -- the demo: python -m examples.trading --------------------------------------------------


def trades(now: datetime) -> list[Trade]:
    """40 seconds of trades, 5 a second per symbol, in time order: ACME trades near 100,
    goes to 101 20 seconds ago and to 102.6 a second later; GLOBEX trades at 50 with one
    stray print at 48.7 15 seconds ago."""
    now = now.replace(microsecond=0)  # the bars are whole seconds of the epoch
    out = []
    for tick in range(200):
        at = streamdemo.ago(40 - tick / 5, now)
        second = tick // 5
        acme = 100.0 + 0.1 * (tick % 3) if second < 20 else 101.0 if second == 20 else 102.6
        globex = 48.7 if tick == 125 else 50.0
        out.append(Trade(symbol="ACME", price=acme, quantity=100 + tick % 7, at=at))
        out.append(Trade(symbol="GLOBEX", price=globex, quantity=40, at=at))
    return out


def main(argv: list[str] | None = None) -> None:
    db = streamdemo.parse_args("The trading example, end to end.", argv)

    def halted(client: ov.Client) -> bool:
        return bool(streamdemo.emitted(client, TradingHalted))

    def scenario(client: ov.Client) -> None:
        client.send_many(t.envelope for t in trades(datetime.now(UTC)))
        streamdemo.wait_for(client, halted)
        client.send(RiskCleared(symbol="ACME", officer="r.ortiz"))

    def done(client: ov.Client) -> bool:
        checks = client.instances(process="risk_check")
        return len(checks) == 2 and all(i.status == "completed" for i in checks)

    streamdemo.run("examples.trading:app", app, db, scenario, done)
    with ov.Client(f"sqlite:///{db}", app=app) as client:
        for e in streamdemo.emitted(client, PriceMoved):
            assert isinstance(e, PriceMoved)
            print(f"price.moved {e.symbol}: {e.from_price} -> {e.to_price} ({e.change:+.2%})")
        for i in client.instances(process="risk_check"):
            print(f"risk check of {i.key}: {i.result}")
        bars = streamdemo.emitted(client, VwapUpdated)
        print(f"VWAP bars: {len(bars)}")
    print(f"database: {db}")


if __name__ == "__main__":
    main()
