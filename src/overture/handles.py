"""What ``client.start(event)`` returns: the instances the event starts, and their results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.identity import instance_id_for
from .errors import ConfigError
from .results import outcome

if TYPE_CHECKING:
    from .app import App
    from .async_client import AsyncClient
    from .client import Client, Instance
    from .events import Envelope


def started_by(app: App | None, envelope: Envelope, process: str | None) -> tuple[str, ...]:
    """The ids of the instances ``envelope`` starts: of ``process``, or of every process
    of ``app`` it triggers (the engine derives the same ids, see ``instance_id_for``).

    Raises:
        ConfigError: neither says which processes it starts, the app has none for it, or
            ``process`` is not one of them.
    """
    if process is not None:
        if app is not None and process not in {d.name for d in app.triggers(envelope.type)}:
            raise ConfigError(
                f"process {process!r} of app {app.name!r} does not start on "
                f"{envelope.type!r} events, so start() would wait for an instance that "
                "never exists"
            )
        names = [process]
    elif app is None:
        raise ConfigError(
            "start() needs to know the processes the event starts: give the client the app "
            "(Client(url, app=app)) or name the process (start(event, process='name'))"
        )
    else:
        names = list(dict.fromkeys(d.name for d in app.triggers(envelope.type)))
        if not names:
            raise ConfigError(f"no process of app {app.name!r} starts on {envelope.type!r} events")
    return tuple(instance_id_for(name, envelope) for name in names)


def _only(instance_ids: tuple[str, ...]) -> str:
    if len(instance_ids) != 1:
        raise ConfigError(
            f"the event started {len(instance_ids)} instances {list(instance_ids)}: "
            "ask each one (client.wait(id)) instead"
        )
    return instance_ids[0]


class Started:
    """The instances one sent event starts.

    Attributes:
        event_id: the sent event's id.
        instance_ids: one id per process the event starts.
    """

    def __init__(self, client: Client, event_id: str, instance_ids: tuple[str, ...]) -> None:
        self._client = client
        self.event_id = event_id
        self.instance_ids = instance_ids

    @property
    def instance_id(self) -> str:
        """The instance's id (raises :class:`ConfigError` if it started several)."""
        return _only(self.instance_ids)

    def wait(self, timeout: float = 30.0) -> Instance:
        """Block until the instance has finished; returns it whatever its status."""
        return self._client.wait(self.instance_id, timeout=timeout)

    def result(self, timeout: float = 30.0) -> Any:
        """Block until the instance has finished; returns its result.

        Raises:
            InstanceFailed: it failed or was cancelled (with the instance's error).
            TimeoutError: it did not finish in time.
        """
        return outcome(self._client._results.wait(self.instance_id, timeout))

    def __repr__(self) -> str:
        return f"Started(event_id={self.event_id!r}, instance_ids={self.instance_ids!r})"


class AsyncStarted:
    """The instances one event sent by an :class:`~overture.AsyncClient` starts."""

    def __init__(self, client: AsyncClient, event_id: str, instance_ids: tuple[str, ...]) -> None:
        self._client = client
        self.event_id = event_id
        self.instance_ids = instance_ids

    @property
    def instance_id(self) -> str:
        """The instance's id (raises :class:`ConfigError` if it started several)."""
        return _only(self.instance_ids)

    async def wait(self, timeout: float = 30.0) -> Instance:  # noqa: ASYNC109 (the sync handle's surface)
        """Wait until the instance has finished; returns it whatever its status."""
        return await self._client.wait(self.instance_id, timeout=timeout)

    async def result(self, timeout: float = 30.0) -> Any:  # noqa: ASYNC109
        """Wait until the instance has finished; returns its result.

        Raises:
            InstanceFailed: it failed or was cancelled (with the instance's error).
            TimeoutError: it did not finish in time.
        """
        return outcome(await self._client._finished(self.instance_id, timeout))

    def __repr__(self) -> str:
        return f"AsyncStarted(event_id={self.event_id!r}, instance_ids={self.instance_ids!r})"
