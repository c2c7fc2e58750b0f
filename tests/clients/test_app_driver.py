"""The driver app's real widgets, headless, against a real hub."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.driver.cli import sample_route
from clients.driver.gps import RouteSource, load_route
from protocol.ids import order_chat
from tests.clients.ui_support import driver_app, eventually, label_texts, place_order, running, tap
from tests.clients.ui_support import kivy_blockbuster as blockbuster  # noqa: F401
from tests.support.peer import Peer

pytestmark = pytest.mark.asyncio


def statuses(peer: Peer, order_id: str) -> list[str]:
    return [f["order"]["status"] for f in peer.of("order.updated") if f["order"]["order_id"] == order_id]


async def test_job_steps_go_through_the_outbox_to_the_hub(hub_factory, tmp_path: Path) -> None:
    hub = await hub_factory()
    await place_order(hub, "o-1", driver="driver-1")
    app = await driver_app(hub, tmp_path)
    async with running(app), Peer(hub.url, hub.token("shopper", "shopper-1")) as shopper:
        assert (await shopper.ok("order.watch", {"order_id": "o-1"}))["status"] == "created"
        await eventually(lambda: "o-1" in app.step_buttons, "the delivery.assigned job is listed")
        assert app.step_buttons["o-1"].text == "Accept job"
        assert app.nav["jobs"].badge == 1

        await tap(app, lambda: app.step_buttons["o-1"])
        await eventually(
            lambda: any(n["data"].get("driver_id") == "driver-1" for n in shopper.of("notification")),
            "the shopper is told the driver accepted",
        )
        await eventually(lambda: app.step_buttons["o-1"].text == "Picked up", "next step offered")

        await tap(app, app.duty_button)
        await eventually(lambda: app.top_bar.sync_label == "offline", "off duty: offline")
        await tap(app, lambda: app.step_buttons["o-1"])
        await eventually(
            lambda: "Order placed \u00b7 Picked up \u00b7 sending\u2026" in label_texts(app.job_cards["o-1"]),
            "the step shows as sending while offline",
        )
        assert statuses(shopper, "o-1") == []

        await tap(app, app.duty_button)
        await eventually(lambda: statuses(shopper, "o-1") == ["picked_up"], "picked_up reached the hub")
        await eventually(
            lambda: app.step_buttons.get("o-1") and app.step_buttons["o-1"].text == "Delivered", "next"
        )
        await tap(app, lambda: app.step_buttons["o-1"])
        await eventually(
            lambda: statuses(shopper, "o-1") == ["picked_up", "delivered"], "delivered reached the hub"
        )
        await eventually(lambda: "Finished" in label_texts(app.jobs_box), "the job moves to Finished")
        assert "o-1" not in app.step_buttons


async def test_chat_with_the_customer_and_gps_streaming(hub_factory, tmp_path: Path) -> None:
    hub = await hub_factory()
    await place_order(hub, "o-2", driver="driver-1", dropoff=(-1.2925, 36.7875))
    route = RouteSource(await asyncio.to_thread(load_route, sample_route()), speed_mps=12.0, interval_s=1.0)
    app = await driver_app(hub, tmp_path, gps=route)
    async with running(app), Peer(hub.url, hub.token("shopper", "shopper-1")) as shopper:
        await shopper.ok("track.watch", {"order_id": "o-2"})
        await eventually(lambda: "o-2" in app.step_buttons, "job listed")
        await tap(app, lambda: app.step_buttons["o-2"])
        await eventually(lambda: app.current_order == "o-2", "the accepted job is the current order")
        await eventually(lambda: shopper.of("track.position"), "positions reach the customer's track room")
        await eventually(
            lambda: app.gps_label.text.startswith("Location shared"), "the GPS line says the fix was shared"
        )

        await tap(app, app.nav["chat"])
        assert app.chat_panel.title == "Customer of order o-2"
        app.chat_panel.ids.entry.text = "I am on Waiyaki Way, 10 minutes away."
        await tap(app, app.chat_panel.ids.send)
        await eventually(
            lambda: [b.mark for b in app.chat_panel.bubbles] == ["delivered"], "the message is delivered"
        )
        history = await shopper.history(order_chat("o-2"))
        assert [e["text"] for e in history] == ["I am on Waiyaki Way, 10 minutes away."]
        await shopper.ok("chat.send", {"stream": order_chat("o-2"), "client_id": "c-1", "text": "Asante!"})
        await eventually(lambda: [b.text for b in app.chat_panel.bubbles][-1:] == ["Asante!"], "reply shown")
