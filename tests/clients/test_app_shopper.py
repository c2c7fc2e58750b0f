"""The shopper app's real widgets, headless, against a real hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.ids import boutique_chat
from tests.clients.ui_support import (
    eventually,
    find,
    label_texts,
    running,
    set_stock,
    settle,
    shopper_app,
    tap,
)
from tests.clients.ui_support import kivy_blockbuster as blockbuster  # noqa: F401
from tests.support.peer import Peer

pytestmark = pytest.mark.asyncio

BOUTIQUE = "boutique-a"
STREAM = boutique_chat(BOUTIQUE, "shopper-1")
QUESTION = "Is the blue kikoy still available?"


def bubble(app, text: str):
    found = [b for b in app.chat_panel.bubbles if b.text == text]
    return found[0] if len(found) == 1 else None


async def test_a_message_shows_sending_then_delivered_then_read(hub_factory, tmp_path: Path) -> None:
    hub = await hub_factory()
    app = await shopper_app(hub, tmp_path, boutiques=[BOUTIQUE])
    async with running(app):
        await eventually(lambda: app.top_bar.sync_label == "live", "sync pill says live")
        await tap(app, app.boutique_chat_button)
        assert app.sm.current == "chat" and app.chat_panel.title == BOUTIQUE

        await hub.stop()
        await eventually(lambda: app.top_bar.sync_label in ("offline", "connecting"), "pill leaves live")
        app.chat_panel.ids.entry.text = QUESTION
        await tap(app, app.chat_panel.ids.send)
        await eventually(lambda: bubble(app, QUESTION), "bubble shown")
        sent = bubble(app, QUESTION)
        assert sent.mine and sent.mark == "sending"
        assert app.chat_panel.ids.entry.text == ""
        await settle(app)
        assert bubble(app, QUESTION).mark == "sending"  # still no hub

        hub = await hub_factory(port=hub.port)
        await eventually(
            lambda: (b := bubble(app, QUESTION)) is not None and b.mark == "delivered",
            "mark becomes delivered",
        )
        await eventually(lambda: app.top_bar.sync_label == "live", "live again")

        async with Peer(hub.url, hub.token("staff", "staff-1", BOUTIQUE)) as staff:
            stored = await staff.history(STREAM)
            assert [e["text"] for e in stored] == [QUESTION]
            await staff.ok("chat.typing", {"stream": STREAM})
            await eventually(lambda: app.chat_panel.typing_text == "staff-1 is typing\u2026", "typing shown")
            await staff.ok("chat.read", {"stream": STREAM, "seq": stored[0]["seq"]})
            await eventually(lambda: bubble(app, QUESTION).mark == "read", "read receipt shown")


async def test_unread_count_and_reply_from_the_boutique(hub_factory, tmp_path: Path) -> None:
    hub = await hub_factory()
    app = await shopper_app(hub, tmp_path, boutiques=[BOUTIQUE])
    async with running(app):
        await eventually(lambda: app.top_bar.sync_label == "live", "live")
        async with Peer(hub.url, hub.token("staff", "staff-1", BOUTIQUE)) as staff:
            for i, text in enumerate(["Karibu!", "Yes, we have it in blue.", "Size M or L?"]):
                await staff.ok("chat.send", {"stream": STREAM, "client_id": f"staff-msg-{i}", "text": text})
        await eventually(lambda: app.nav["chats"].badge == 3, "3 unread on the Chats tab")
        await tap(app, app.nav["chats"])
        await eventually(lambda: app.chats_box.children, "conversation listed")
        assert any(getattr(w, "count", 0) == 3 for w in app.chats_box.children[-1].walk()), "3 unread"
        await tap(app, lambda: app.chats_box.children[-1])
        await eventually(
            lambda: [b.text for b in app.chat_panel.bubbles][-1:] == ["Size M or L?"], "reply shown"
        )
        assert not any(b.mine for b in app.chat_panel.bubbles)
        await eventually(lambda: app.nav["chats"].badge == 0, "opening the chat reads it")


async def test_stock_label_follows_the_hub(hub_factory, tmp_path: Path) -> None:
    hub = await hub_factory()
    await set_stock(hub, BOUTIQUE, "kikoy-blue", 12, "s1")
    app = await shopper_app(hub, tmp_path, boutiques=[BOUTIQUE])
    async with running(app):
        key = (BOUTIQUE, "kikoy-blue")
        await eventually(lambda: key in app.stock_labels, "product listed from the stock snapshot")
        assert app.stock_labels[key].text == "12 in stock"
        await set_stock(hub, BOUTIQUE, "kikoy-blue", 2, "s2")
        await eventually(lambda: app.stock_labels[key].text == "Only 2 left", "label follows a live change")
        await set_stock(hub, BOUTIQUE, "kikoy-blue", 0, "s3")
        await eventually(lambda: app.stock_labels[key].text == "Out of stock", "label shows out of stock")
        await set_stock(hub, BOUTIQUE, "kanga-red", 7, "s4")
        await eventually(lambda: (BOUTIQUE, "kanga-red") in app.stock_labels, "a new SKU appears")

        await tap(app, lambda: app.heart_buttons[key])
        await tap(app, app.nav["wishlist"])
        await eventually(lambda: app.wishlist_box.children, "wishlist row")
        async with Peer(hub.url, hub.token("shopper", "shopper-1")) as me:

            async def wished() -> list[tuple[str, str]]:
                items = (await me.ok("wishlist.list", {}))["items"]
                return [(i["boutique_id"], i["sku"]) for i in items]

            await eventually(wished, "the wishlist reached the hub")
            assert await wished() == [key]


async def test_what_was_seen_is_readable_offline_after_a_restart(hub_factory, tmp_path: Path) -> None:
    hub = await hub_factory()
    await set_stock(hub, BOUTIQUE, "kikoy-blue", 12, "s1")
    app = await shopper_app(hub, tmp_path, boutiques=[BOUTIQUE])
    async with running(app):
        await eventually(lambda: (BOUTIQUE, "kikoy-blue") in app.stock_labels, "product listed")
        await app.engine.send_chat(STREAM, QUESTION)

        async def sent() -> bool:
            return await app.store.pending_count() == 0

        await eventually(sent, "the message reached the hub")
    await hub.stop()

    again = await shopper_app(hub, tmp_path, boutiques=[BOUTIQUE])
    async with running(again):
        assert again.top_bar.sync_label in ("offline", "connecting")
        await eventually(
            lambda: (BOUTIQUE, "kikoy-blue") in again.stock_labels, "product shown from the store"
        )
        assert again.stock_labels[(BOUTIQUE, "kikoy-blue")].text == "12 in stock"
        await tap(again, again.boutique_chat_button)
        await eventually(lambda: bubble(again, QUESTION) is not None, "the chat is shown from the store")
        assert bubble(again, QUESTION).mark == "delivered"


async def test_the_notification_centre_counts_and_marks_read(hub_factory, tmp_path: Path) -> None:
    hub = await hub_factory()
    app = await shopper_app(hub, tmp_path, boutiques=[BOUTIQUE])
    async with running(app):
        await eventually(lambda: app.top_bar.sync_label == "live", "live")
        for i, title in enumerate(["Your order is on the way", "Back in stock: Kikoy blue"]):
            note = {"user": "shopper-1", "category": "order", "title": title, "id": f"n-{i}"}
            await hub.service("/api/v1/notifications", note)
        await eventually(lambda: app.nav["alerts"].badge == 2, "badge 2 on the Alerts tab")
        await tap(app, app.nav["alerts"])
        assert app.alerts_title.text == "Notifications (2 new)"
        assert "Back in stock: Kikoy blue" in label_texts(app.alerts_box)
        await tap(
            app,
            lambda: find(app.alerts_box.parent.parent, lambda w: getattr(w, "text", "") == "Mark all read")[
                0
            ],
        )
        await eventually(lambda: app.nav["alerts"].badge == 0, "badge cleared")
        async with Peer(hub.url, hub.token("shopper", "shopper-1")) as me:

            async def hub_badge() -> bool:
                reply = await me.ok("sync", {"cursors": []})
                return [s["unread"] for s in reply["streams"] if s["stream"] == "inbox:u:shopper-1"] == [0]

            await eventually(hub_badge, "the hub's unread count is 0 too")
