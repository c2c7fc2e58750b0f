"""The staff console in a real browser: sign-in, chat both ways, and surviving a dropped connection.

Each test runs a real hub (``hub_factory``), Debian's Chromium through Playwright, and
shoppers as python-socketio clients that follow the documented catch-up algorithm.
"""

from __future__ import annotations

import re

import pytest

from protocol.ids import ID_RE
from tests.console.pages import ConsolePage
from tests.support.streamclient import StreamClient

NORA = "chat:b:b1:nora"
OMAR = "chat:b:b1:omar"


def staff_token(hub, sub: str = "bob", boutique: str = "b1", ttl: float = 3600.0) -> str:  # type: ignore[no-untyped-def]
    return hub.token("staff", sub, boutique=boutique, ttl=ttl)


async def shopper(hub, name: str, url: str | None = None) -> StreamClient:  # type: ignore[no-untyped-def]
    client = StreamClient(url or hub.url, hub.token("shopper", name))
    await client.connect()
    return client


def frames(client: StreamClient, event: str) -> list[dict]:  # type: ignore[type-arg]
    return [data for name, data in client.live if name == event]


def read_by_staff(client: StreamClient, seq: int) -> bool:
    """Whether ``client`` was told that boutique b1's staff read Nora's conversation up to ``seq``."""
    return {"stream": NORA, "party": "boutique:b1", "seq": seq} in frames(client, "chat.read")


@pytest.mark.asyncio
async def test_fragment_sign_in_is_removed_from_the_address_bar(hub, browser) -> None:  # type: ignore[no-untyped-def]
    token = staff_token(hub)
    console = await ConsolePage.open(browser, f"{hub.url}/console#token={token}")
    await console.wait_online()
    page = console.page
    assert page.url == f"{hub.url}/console"
    assert await page.evaluate("location.hash") == ""
    assert await page.evaluate("sessionStorage.getItem('soko.console.token')") == token
    assert await page.evaluate("localStorage.length") == 0
    assert "bob · staff of b1" in await page.inner_text("#who")
    # A reload keeps the tab signed in (sessionStorage), with no token in the URL.
    await page.reload()
    await console.wait_online()
    assert page.url == f"{hub.url}/console"
    # The socket upgraded to a WebSocket on the page's own origin, allowed by the CSP.
    assert any(u.startswith(f"ws://127.0.0.1:{hub.port}/socket.io/") for u in console.websockets)
    console.assert_clean()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("token_kind", "message"),
    [
        ("shopper", "for boutique staff; the token you used is for a shopper"),
        ("expired", "This token has expired"),
        ("forged", "did not accept this token"),
        ("garbage", "does not look like a token"),
    ],
)
async def test_refused_tokens_get_a_clear_message(hub, browser, token_kind, message) -> None:  # type: ignore[no-untyped-def]
    token = {
        "shopper": hub.token("shopper", "nora"),
        "expired": staff_token(hub, ttl=-60),
        "forged": staff_token(hub)[:-4] + "AAAA",
        "garbage": "not a token",
    }[token_kind]
    console = await ConsolePage.open(browser, f"{hub.url}/console")
    await console.page.fill("#token", token)
    await console.page.click("#signin-form button[type=submit]")
    await console.page.wait_for_function(
        "(m) => document.querySelector('#signin-error').textContent.includes(m)", arg=message, timeout=10_000
    )
    assert await console.page.is_visible("#signin")
    assert not await console.page.is_visible("#app")
    assert await console.page.evaluate("sessionStorage.getItem('soko.console.token')") is None


@pytest.mark.asyncio
async def test_a_token_expiring_while_signed_in_asks_for_a_fresh_one(hub, browser) -> None:  # type: ignore[no-untyped-def]
    console = await ConsolePage.open(browser, f"{hub.url}/console")
    await console.sign_in(staff_token(hub, ttl=2))
    # The hub closes the session at expiry (well before the 45 s ping timeout would reveal it over
    # WebSocket); the reconnect is refused with token_expired.
    await console.page.wait_for_selector("#signin", state="visible", timeout=10_000)
    assert "This token has expired" in await console.page.inner_text("#signin-error")
    assert await console.page.evaluate("sessionStorage.getItem('soko.console.token')") is None
    # A fresh token signs the same tab in again.
    await console.sign_in(staff_token(hub))
    assert "bob · staff of b1" in await console.page.inner_text("#who")


@pytest.mark.asyncio
async def test_staff_and_shoppers_chat_both_ways(hub, browser) -> None:  # type: ignore[no-untyped-def]
    nora = await shopper(hub, "nora")
    omar = await shopper(hub, "omar")
    try:
        await nora.send(NORA, "Hi, is the blue mug in stock?")
        console = await ConsolePage.open(browser, f"{hub.url}/console")
        await console.sign_in(staff_token(hub))
        assert await console.conversations() == [{"stream": NORA, "unread": 1, "typing": False}]

        # A new conversation arrives live, goes to the top, with its own unread count.
        await omar.send(OMAR, "Do you deliver to Westlands?")
        await console.wait("(s) => document.querySelector('#conversations li')?.dataset.stream === s", OMAR)
        assert await console.conversations() == [
            {"stream": OMAR, "unread": 1, "typing": False},
            {"stream": NORA, "unread": 1, "typing": False},
        ]
        assert await console.page.inner_text("#inbox-unread") == "2"

        # Opening Nora's conversation shows her message and reads it: the badge goes, Nora is told.
        await console.page.click(f"#conversations li[data-stream='{NORA}'] button")
        await console.wait_messages(["Hi, is the blue mug in stock?"])
        await console.wait(f"() => !document.querySelector(\"li[data-stream='{NORA}'] .unread\")")
        await nora.wait_for(lambda: read_by_staff(nora, 1))

        # Nora typing shows live in the chat and in the inbox row.
        await nora.ok("chat.typing", {"stream": NORA})
        await console.wait("() => document.querySelector('#typing').textContent === 'nora is typing…'")
        assert {"stream": NORA, "unread": 0, "typing": True} in await console.conversations()

        # Staff answers with the keyboard: type, Enter.
        await console.page.focus("#message")
        await console.page.keyboard.type("Yes, we have 12.")
        await nora.wait_for(
            lambda: {"stream": NORA, "user": "bob", "role": "staff"} in frames(nora, "chat.typing")
        )
        await console.page.keyboard.press("Enter")
        await nora.wait_for(lambda: nora.texts(NORA) == ["Hi, is the blue mug in stock?", "Yes, we have 12."])
        reply = nora.entries[NORA][1]
        assert reply["author"] == "bob" and reply["author_role"] == "staff"
        assert ID_RE.fullmatch(reply["client_id"]) and len(reply["client_id"]) == 26
        shown = await console.wait_messages(["Hi, is the blue mug in stock?", "Yes, we have 12."])
        assert shown[1]["client_id"] == reply["client_id"] and shown[1]["key"] == f"{NORA}:2"
        assert shown[1]["meta"].endswith("Sent")
        assert await console.page.input_value("#message") == ""

        # Nora reads it: the staff side shows the receipt.
        await nora.ok("chat.read", {"stream": NORA, "seq": 2})
        await console.wait(
            "() => document.querySelector('#messages li:last-child .meta').textContent.endsWith('Seen')"
        )

        # With the conversation open, her next message is read at once; rows are ordered by activity.
        await nora.send(NORA, "Great, I'll come by at 5.")
        await console.wait_messages(
            ["Hi, is the blue mug in stock?", "Yes, we have 12.", "Great, I'll come by at 5."]
        )
        await nora.wait_for(lambda: read_by_staff(nora, 3))
        await console.wait_conversations(
            [
                {"stream": NORA, "unread": 0, "typing": False},
                {"stream": OMAR, "unread": 1, "typing": False},
            ]
        )
        # Omar heard nothing of Nora's conversation.
        assert omar.texts(NORA) == [] and not [f for f in frames(omar, "chat.read") if f["stream"] == NORA]
        console.assert_clean()
    finally:
        await nora.disconnect()
        await omar.disconnect()


@pytest.mark.asyncio
async def test_dropped_connection_loses_nothing_and_duplicates_nothing(  # type: ignore[no-untyped-def]
    hub, hub_factory, browser, proxy_factory
) -> None:
    """The link drops twice (the hub keeps running), then the hub itself restarts on the same port."""
    nora = await shopper(hub, "nora")
    omar = await shopper(hub, "omar")
    proxy = await proxy_factory(hub.port)
    try:
        await nora.send(NORA, "m1")
        console = await ConsolePage.open(browser, f"{proxy.url}/console")
        await console.sign_in(staff_token(hub))
        await console.page.click(f"#conversations li[data-stream='{NORA}'] button")
        await console.wait_messages(["m1"])

        # The link drops: the banner shows. What shoppers write meanwhile is caught up on reconnect
        # (sync + catchup from the cursors held; no later live frame reveals it).
        await proxy.cut()
        await console.page.wait_for_selector("#offline", state="visible", timeout=10_000)
        await nora.send(NORA, "m2")
        await nora.send(NORA, "m3")
        await omar.send(OMAR, "o1")
        await proxy.restore()
        await console.wait_online()
        await console.wait_messages(["m1", "m2", "m3"])
        await console.wait_conversations(
            [
                {"stream": OMAR, "unread": 1, "typing": False},
                {"stream": NORA, "unread": 0, "typing": False},
            ]
        )

        # It drops again: what staff type queues visibly, each message with its client id from the start.
        await proxy.cut()
        await console.page.wait_for_selector("#offline", state="visible", timeout=10_000)
        for text in ("q1", "q2"):
            await console.page.fill("#message", text)
            await console.page.press("#message", "Enter")
        queued = await console.wait(
            """() => {
                const items = [...document.querySelectorAll('#messages li[data-state=queued]')];
                return items.length === 2 && items.map(li => [li.dataset.clientId, li.textContent]);
            }"""
        )
        assert [t for _, t in queued] == ["q1Queued: sends when online", "q2Queued: sends when online"]
        queued_ids = [cid for cid, _ in queued]
        assert all(ID_RE.fullmatch(cid) for cid in queued_ids) and len(set(queued_ids)) == 2
        await nora.send(NORA, "m4")

        # The link comes back: catch-up first, then the outbox in order; each message once.
        await proxy.restore()
        await console.wait_online()
        expected = ["m1", "m2", "m3", "m4", "q1", "q2"]
        shown = await console.wait_messages(expected)
        assert [m["key"] for m in shown] == [f"{NORA}:{seq}" for seq in range(1, 7)]
        await nora.wait_for(lambda: nora.texts(NORA) == expected)
        assert [e["client_id"] for e in nora.entries[NORA][4:]] == queued_ids
        assert not await console.page.is_visible("#offline")

        # Now the hub itself restarts on the same port and data; a message typed meanwhile goes out once.
        await hub.stop()
        await console.page.wait_for_selector("#offline", state="visible", timeout=10_000)
        await console.page.fill("#message", "q3")
        await console.page.press("#message", "Enter")
        await console.page.wait_for_selector("#messages li[data-state=queued]", timeout=10_000)
        restarted = await hub_factory(port=hub.port)
        await console.wait_online()
        expected.append("q3")
        shown = await console.wait_messages(expected)
        assert [m["key"] for m in shown] == [f"{NORA}:{seq}" for seq in range(1, 8)]
        await nora.reconnect(restarted.url)
        await nora.send(NORA, "m5")
        expected.append("m5")
        shown = await console.wait_messages(expected)
        assert len({m["key"] for m in shown}) == len(expected) == 8
        assert nora.texts(NORA) == expected
        assert await console.page.evaluate(
            "Object.keys(sessionStorage).filter(k => k.startsWith('soko.console.outbox'))"
            ".map(k => JSON.parse(sessionStorage.getItem(k)).length)"
        ) == [0]
        console.assert_clean()
    finally:
        await nora.disconnect()
        await omar.disconnect()


@pytest.mark.asyncio
async def test_history_pages_backwards(hub_factory, browser) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(rate_burst=100)
    nora = await shopper(hub, "nora")
    try:
        texts = [f"message {i}" for i in range(1, 46)]
        for text in texts:
            await nora.send(NORA, text)
        console = await ConsolePage.open(browser, f"{hub.url}/console")
        await console.sign_in(staff_token(hub))
        await console.page.click(f"#conversations li[data-stream='{NORA}'] button")
        await console.wait_messages(texts[-30:])
        await console.page.click("#older")
        shown = await console.wait_messages(texts)
        assert [int(re.sub(r".*:", "", m["key"])) for m in shown] == list(range(1, 46))
        assert not await console.page.is_visible("#older")
    finally:
        await nora.disconnect()
