"""The errors of the development broker."""

from __future__ import annotations

from ..errors import OvertureError


class DevKafkaError(OvertureError):
    """The development Kafka broker could not be assembled, started, reached or stopped."""


class MissingToolError(DevKafkaError):
    """A program the broker needs (``java``, ``mvn``) is not on ``PATH``."""
