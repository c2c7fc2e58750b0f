"""A page object for the staff console: what a test reads off the DOM, and how it signs in."""

from __future__ import annotations

import json
from typing import Any

from playwright.async_api import Browser, Page

WAIT_MS = 10_000
INBOX_ROWS = """[...document.querySelectorAll('#conversations li')].map(li => ({
    stream: li.dataset.stream,
    unread: Number(li.querySelector('.unread')?.textContent || 0),
    typing: li.querySelector('.typing-now') !== null,
}))"""


class ConsolePage:
    """One browser tab on ``/console``. Records page errors and CSP violations reported to the console."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.websockets: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._on_console)
        page.on("websocket", lambda ws: self.websockets.append(ws.url))

    def _on_console(self, msg: Any) -> None:
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.errors.append(f"console: {msg.text}")

    @classmethod
    async def open(cls, browser: Browser, url: str, **context: Any) -> ConsolePage:
        context.setdefault("viewport", {"width": 1280, "height": 860})
        ctx = await browser.new_context(**context)
        console = cls(await ctx.new_page())
        await console.page.goto(url)
        return console

    async def sign_in(self, token: str) -> None:
        """Paste ``token`` into the form and wait until the console is online."""
        await self.page.fill("#token", token)
        await self.page.click("#signin-form button[type=submit]")
        await self.wait_online()

    async def wait_online(self) -> None:
        await self.page.wait_for_selector("#conn[data-state=online]", timeout=WAIT_MS)

    async def wait(self, expression: str, arg: Any = None, timeout: int = WAIT_MS) -> Any:
        """Wait until the JavaScript ``expression`` (a function of ``arg``) is truthy; returns its value."""
        handle = await self.page.wait_for_function(expression, arg=arg, timeout=timeout)
        return await handle.json_value()

    async def conversations(self) -> list[dict[str, Any]]:
        """Inbox rows, top to bottom: stream, unread count (0 when no badge), typing shown."""
        result: list[dict[str, Any]] = await self.page.evaluate(f"() => {INBOX_ROWS}")
        return result

    async def wait_conversations(self, expected: list[dict[str, Any]]) -> None:
        """Wait until the inbox rows are exactly ``expected`` (as :meth:`conversations` returns them)."""
        try:
            await self.wait(
                f"(expected) => JSON.stringify({INBOX_ROWS}) === JSON.stringify(expected)", expected
            )
        except Exception:
            assert await self.conversations() == expected
            raise

    async def messages(self) -> list[dict[str, Any]]:
        """Messages of the open conversation, top to bottom."""
        result: list[dict[str, Any]] = await self.page.evaluate(
            """() => [...document.querySelectorAll('#messages li')].map(li => ({
                key: li.dataset.key || null,
                client_id: li.dataset.clientId || null,
                state: li.dataset.state || null,
                text: li.querySelector('.text').textContent,
                meta: li.querySelector('.meta').textContent,
            }))"""
        )
        return result

    async def wait_messages(self, texts: list[str]) -> list[dict[str, Any]]:
        """Wait until the open conversation shows exactly ``texts``, all stored (keyed by stream and seq)."""
        await self.wait(
            """(texts) => {
                const items = [...document.querySelectorAll('#messages li')];
                return items.length === texts.length && items.every(
                    (li, i) => li.dataset.key && li.querySelector('.text').textContent === texts[i]);
            }""",
            texts,
        )
        return await self.messages()

    async def stock_level(self, sku: str) -> int | None:
        text = await self.page.evaluate(
            "(sku) => document.querySelector(`#stock-body tr[data-sku='${sku}'] .level`)?.textContent",
            sku,
        )
        return None if text is None else int(text)

    async def wait_low(self, sku: str, low: bool = True) -> None:
        """Wait until the SKU's row is (or is no longer) highlighted as low stock."""
        await self.wait(
            "([sku, low]) => document.querySelector(`#stock-body tr[data-sku='${sku}']`)"
            ".classList.contains('low') === low",
            [sku, low],
        )

    async def wait_toast(self, category: str, text: str = "") -> None:
        await self.wait(
            """([category, text]) => [...document.querySelectorAll('#toasts .toast')].some(
                t => t.dataset.category === category && t.textContent.includes(text))""",
            [category, text],
        )

    async def wait_level(self, sku: str, level: int, timeout: int = WAIT_MS) -> None:
        await self.wait(
            """([sku, level]) => document.querySelector(`#stock-body tr[data-sku='${sku}'] .level`)
                ?.textContent === String(level)""",
            [sku, level],
            timeout=timeout,
        )

    async def notifications(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.page.evaluate(
            """() => [...document.querySelectorAll('#notifications li')].map(li => ({
                key: li.dataset.key, category: li.dataset.category,
                title: li.querySelector('.title').textContent,
            }))"""
        )
        return result

    async def toasts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.page.evaluate(
            """() => [...document.querySelectorAll('#toasts .toast')].map(t => ({
                category: t.dataset.category, text: t.textContent,
            }))"""
        )
        return result

    async def in_page_requests(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """From inside the page (its origin, its token), open a second socket and send ``calls``;
        returns the acks."""
        result: list[Any] = await self.page.evaluate(
            """async (calls) => {
                const token = sessionStorage.getItem('soko.console.token');
                const socket = io({ auth: { token }, transports: ['websocket'], reconnection: false });
                await new Promise((resolve, reject) => {
                    socket.on('welcome', resolve);
                    socket.on('connect_error', reject);
                });
                const acks = [];
                for (const [event, data] of calls) {
                    acks.push(await socket.timeout(10000).emitWithAck(event, data));
                }
                socket.disconnect();
                return acks;
            }""",
            [list(c) for c in calls],
        )
        return result

    def assert_clean(self) -> None:
        """No script error and no Content-Security-Policy violation happened in the page."""
        assert self.errors == [], json.dumps(self.errors, indent=1)
