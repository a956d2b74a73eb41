"""The payments and dispatch services the ride-sharing example orchestrates.

A small FastAPI app, run by uvicorn, standing in for services other teams own::

    RIDESHARING_WEBHOOK_SECRET=whsec_... python -m examples.ridesharing_services \\
        --port 8471 --ledger rides-ledger.jsonl

Every request must carry a valid Standard Webhooks signature made with the secret in
``RIDESHARING_WEBHOOK_SECRET`` (401 otherwise): the engine's push tasks sign theirs, the
example's compensation steps sign theirs the same way.

| Endpoint | Called by | Body |
|---|---|---|
| ``POST /payments/authorize`` | the ``payment.authorize`` push task | the task request CloudEvent |
| ``POST /payments/capture`` | the ``payment.capture`` push task | the task request CloudEvent |
| ``POST /payments/void`` | the ``void_payment`` compensation | JSON with ``idempotency_key`` |
| ``POST /drivers/release`` | the ``release_driver`` compensation | JSON with ``idempotency_key`` |
| ``GET /ledger`` | you | the effects applied so far |

Each effect is applied once per idempotency key, whatever the number of deliveries: it
is appended to the ledger (JSON lines, one per effect) the first time and answered from
it afterwards. An authorization above ``LIMIT_CENTS`` is declined with a 422, which the
push task turns into a non-retryable failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from standardwebhooks import Webhook, WebhookVerificationError

from .ridesharing import SECRET_ENV

LIMIT_CENTS = 50_000
"""The largest amount the payments service authorizes."""


class Ledger:
    """The effects the services applied, one JSON line each, at most one per key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._effects: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                effect = json.loads(line)
                self._effects[effect["key"]] = effect

    def apply(self, op: str, key: str, effect: dict[str, Any]) -> dict[str, Any]:
        """Record ``effect`` of ``op`` under ``key`` unless that key was applied before;
        returns the recorded effect (the first one for a repeated key)."""
        scoped = f"{op}:{key}"
        with self._lock:
            if scoped not in self._effects:
                entry = {"op": op, "key": scoped, **effect}
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(entry) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                self._effects[scoped] = entry
            return self._effects[scoped]

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._effects.values())


def create_services(secret: str, ledger: Path) -> FastAPI:
    """The services' ASGI app, verifying requests with ``secret``, recording to ``ledger``."""
    webhook = Webhook(secret)
    book = Ledger(ledger)
    api = FastAPI(title="ride-sharing services")

    async def verified(request: Request) -> dict[str, Any]:
        raw = await request.body()  # the signature covers the exact bytes
        try:
            body: dict[str, Any] = webhook.verify(raw, dict(request.headers))
        except WebhookVerificationError as error:
            raise HTTPException(401, f"bad signature: {error}") from None
        return body

    async def task_input(request: Request) -> tuple[dict[str, Any], str]:
        """A push task's input and idempotency key, from its request CloudEvent."""
        data = (await verified(request))["data"]
        return data["input"], data["idempotency_key"]

    def token(prefix: str, key: str) -> str:
        return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:10].upper()}"

    @api.post("/payments/authorize")
    async def authorize(request: Request) -> dict[str, Any]:
        asked, key = await task_input(request)
        if asked["amount_cents"] > LIMIT_CENTS:
            raise HTTPException(
                422, f"card declined: {asked['amount_cents']} cents is over the limit"
            )
        effect = book.apply(
            "authorize",
            key,
            {
                "trip_id": asked["trip_id"],
                "authorization": token("AUTH", key),
                "amount_cents": asked["amount_cents"],
            },
        )
        return {"authorization": effect["authorization"], "approved": True}

    @api.post("/payments/capture")
    async def capture(request: Request) -> dict[str, Any]:
        asked, key = await task_input(request)
        effect = book.apply(
            "capture",
            key,
            {
                "trip_id": asked["trip_id"],
                "authorization": asked["authorization"],
                "charge": token("CHG", key),
                "amount_cents": asked["amount_cents"],
            },
        )
        return {"charge": effect["charge"], "amount_cents": effect["amount_cents"]}

    @api.post("/payments/void")
    async def void(request: Request) -> dict[str, Any]:
        body = await verified(request)
        effect = book.apply(
            "void",
            body["idempotency_key"],
            {"trip_id": body["trip_id"], "authorization": body["authorization"]},
        )
        return {"voided": effect["authorization"]}

    @api.post("/drivers/release")
    async def release(request: Request) -> dict[str, Any]:
        body = await verified(request)
        effect = book.apply(
            "release",
            body["idempotency_key"],
            {"trip_id": body["trip_id"], "driver": body["driver"]},
        )
        return {"released": effect["driver"]}

    @api.get("/ledger")
    def entries() -> list[dict[str, Any]]:
        return book.entries()

    return api


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8471)
    parser.add_argument("--ledger", type=Path, default=Path("rides-ledger.jsonl"))
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        parser.error(f"set {SECRET_ENV} to the webhook secret (whsec_...) the engine uses")
    uvicorn.run(create_services(secret, args.ledger), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
