"""A push executor refuses what it cannot push with, at start: nothing is sent then."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

import overture as ov
from overture.codec import Codec
from overture.push import PushExecutor, PushOptions
from overture.tasks import TaskDef

from .conftest import new_secret

SECRET = new_secret()


def _push(url: str = "http://127.0.0.1:9/pay", secret_env: str | None = "PAY_SECRET") -> TaskDef:
    return TaskDef("payment.authorize", None, "default", ov.Retry(), None, url, secret_env)


async def test_an_apps_push_tasks_make_an_executor() -> None:
    app = ov.App("shop")
    app.task("payment.authorize", url="https://pay.example/authorize", secret_env="PAY")
    app.task(
        "refund", url="http://127.0.0.1:8081/refund", secret_env="PAY", timeout=timedelta(seconds=5)
    )
    async with PushExecutor(app.tasks, Codec(app), environ={"PAY": SECRET}) as executor:
        assert executor.tasks == {"payment.authorize", "refund"}


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({}, "environment variable PAY_SECRET (its signing secret) is not set"),
        ({"PAY_SECRET": ""}, "environment variable PAY_SECRET (its signing secret) is not set"),
        ({"PAY_SECRET": "s3cret-value"}, "must hold a Standard Webhooks secret starting 'whsec_'"),
        ({"PAY_SECRET": "whsec_not*base64!" + "A" * 30}, "the part after 'whsec_' is not base64"),
        (
            {"PAY_SECRET": "whsec_" + base64.b64encode(b"short").decode()},
            "the key is 5 bytes; Standard Webhooks asks for 24 to 64",
        ),
    ],
)
def test_a_missing_or_invalid_secret_is_refused_at_start(
    environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ov.ConfigError) as caught:
        PushExecutor([_push()], Codec(), environ=environ)
    assert problem in str(caught.value)
    assert "push task 'payment.authorize'" in str(caught.value)
    for value in environ.values():
        if value:
            assert value not in str(caught.value), "the secret is never shown"


async def test_the_secret_is_read_from_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PAY_SECRET", raising=False)
    with pytest.raises(ov.ConfigError, match="PAY_SECRET"):
        PushExecutor([_push()], Codec())
    monkeypatch.setenv("PAY_SECRET", SECRET)
    async with PushExecutor([_push()], Codec()) as executor:
        assert executor.serves("payment.authorize")


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        (_push(secret_env=None), "names no secret_env=: every push is signed"),
        (TaskDef("ship", lambda x: x, "default", ov.Retry(), None), "is not a push task"),
        (_push(url="ftp://host/x"), "is not an absolute http(s) URL"),
        (_push(url="/relative/path"), "is not an absolute http(s) URL"),
        (_push(url="http:///nohost"), "is not an absolute http(s) URL"),
        (_push(url="http://pay example.com/x"), "is not an absolute http(s) URL"),
        (_push(url="http://pay.example.com:99999/x"), "Port out of range"),
    ],
)
def test_a_definition_it_cannot_push_is_refused(definition: TaskDef, problem: str) -> None:
    with pytest.raises(ov.ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        PushExecutor([definition], Codec(), environ={"PAY_SECRET": SECRET})


def test_a_task_given_twice_is_refused() -> None:
    with pytest.raises(ov.ConfigError, match="given twice"):
        PushExecutor([_push(), _push()], Codec(), environ={"PAY_SECRET": SECRET})


@pytest.mark.parametrize(
    "options",
    [
        {"max_connections": 0},
        {"max_response": True},
        {"excerpt": 1.5},
        {"timeout": 0},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": "30"},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ov.ConfigError, match=f"PushOptions.{next(iter(options))} must be"):
        PushOptions(**options)  # type: ignore[arg-type]
