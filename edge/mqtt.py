"""MQTT input: shelf-sensor readings from the store's broker, acknowledged only once handled.

The gateway subscribes at QoS 1 with a fixed client id and a persistent session
(``clean_session=False``), so the broker queues readings published while the
gateway is down or restarting and delivers them when it is back.

A QoS 1 reading is acknowledged (PUBACK) only after the gateway has handled it,
that is, after whatever it changed is committed to the outbox. A gateway killed
between receiving and handling a reading gets it again from the broker. aiomqtt
has no public switch for that yet (empicano/aiomqtt#345), so :func:`manual_acks`
uses the paho client underneath, as that issue's maintainers suggest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiomqtt

from edge.config import MqttConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SensorTopic:
    """Which sensor a topic belongs to."""

    shelf: str
    sensor: str

    @property
    def key(self) -> str:
        return f"{self.shelf}/{self.sensor}"


class TopicPattern:
    """The configured topic template (``store/{boutique}/shelf/{shelf}/{sensor}``) for one boutique.

    Placeholders must fill whole topic levels. ``{boutique}`` is replaced by the
    gateway's boutique; ``{shelf}`` and ``{sensor}`` become ``+`` wildcards.
    """

    def __init__(self, template: str, boutique: str) -> None:
        levels = template.split("/")
        self._literal: dict[int, str] = {}
        self._shelf = self._sensor = -1
        for index, level in enumerate(levels):
            if level == "{shelf}":
                self._shelf = index
            elif level == "{sensor}":
                self._sensor = index
            elif level == "{boutique}":
                self._literal[index] = boutique
            elif "{" in level or "}" in level or level in ("+", "#"):
                raise ValueError(f"topic level {level!r}: placeholders and wildcards must fill a whole level")
            else:
                self._literal[index] = level
        if self._shelf < 0 or self._sensor < 0:
            raise ValueError("the topic template needs both {shelf} and {sensor}")
        self._depth = len(levels)
        self.subscription = "/".join(self._literal.get(i, "+") for i in range(self._depth))
        """The MQTT topic filter to subscribe to."""

    def match(self, topic: str) -> SensorTopic | None:
        """The sensor ``topic`` names, or None when it does not fit the template."""
        levels = topic.split("/")
        if len(levels) != self._depth:
            return None
        if any(levels[i] != value for i, value in self._literal.items()):
            return None
        return SensorTopic(shelf=levels[self._shelf], sensor=levels[self._sensor])


@dataclass(frozen=True, slots=True)
class Reading:
    """One message from a sensor topic. ``ack()`` tells the broker it is handled."""

    topic: str
    payload: bytes
    ack: Callable[[], None]


def manual_acks(client: aiomqtt.Client) -> Callable[[aiomqtt.Message], Callable[[], None]]:
    """Turn off paho's automatic PUBACK on ``client`` (before it connects) and return a
    factory of per-message ack callables. A QoS 0 message needs no ack."""
    paho = client._client
    paho.manual_ack_set(True)

    def acker(message: aiomqtt.Message) -> Callable[[], None]:
        def ack() -> None:
            if message.qos > 0:
                paho.ack(message.mid, message.qos)

        return ack

    return acker


async def readings(
    cfg: MqttConfig,
    client_id: str,
    pattern: TopicPattern,
    on_state: Callable[[bool], None],
    backoff: Callable[[int], Awaitable[None]],
) -> AsyncIterator[Reading]:
    """Yield readings forever, reconnecting to the broker after any failure.

    ``on_state(True/False)`` reports the broker link; ``backoff(attempt)`` waits before
    reconnect attempt ``attempt`` (1, 2, ...). Readings that were yielded but not
    acked when the link dropped are redelivered by the broker (persistent session).
    """
    attempt = 0
    while True:
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=client_id,
            clean_session=False,
            username=cfg.username,
            password=cfg.password,
            keepalive=cfg.keepalive,
        )
        acker = manual_acks(client)
        try:
            async with client:
                await client.subscribe(pattern.subscription, qos=1)
                attempt = 0
                on_state(True)
                log.info("mqtt: subscribed to %s on %s:%d", pattern.subscription, cfg.host, cfg.port)
                async for message in client.messages:
                    yield Reading(str(message.topic), bytes(message.payload or b""), acker(message))
        except aiomqtt.MqttError as exc:
            on_state(False)
            attempt += 1
            log.warning("mqtt: broker %s:%d unreachable (%s); retrying", cfg.host, cfg.port, exc)
            await backoff(attempt)
        except asyncio.CancelledError:
            on_state(False)
            raise
