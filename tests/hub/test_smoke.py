"""End-to-end smoke: a shopper and a boutique's staff chat through a real hub."""

from __future__ import annotations

import pytest

from tests.support.streamclient import StreamClient


@pytest.mark.asyncio
async def test_shopper_and_staff_chat_both_ways(hub) -> None:  # type: ignore[no-untyped-def]
    shopper = StreamClient(hub.url, hub.token("shopper", "alice"))
    staff = StreamClient(hub.url, hub.token("staff", "bob", boutique="b1"))
    await shopper.connect()
    await staff.connect()
    stream = "chat:b:b1:alice"
    ack = await shopper.send(stream, "is the red dress in stock?")
    assert ack["seq"] == 1 and ack["duplicate"] is False
    await staff.wait_for(lambda: staff.texts(stream) == ["is the red dress in stock?"])
    await staff.send(stream, "yes, size M and L")
    await shopper.wait_for(
        lambda: shopper.texts(stream) == ["is the red dress in stock?", "yes, size M and L"]
    )
    await shopper.disconnect()
    await staff.disconnect()
