"""The shopper app: boutiques and their products with live stock, a wishlist, chats with
boutiques, my orders with the driver on a map, and the notification centre.

Everything shown is read from the local store, so what was seen once is readable offline;
every action is a write through the engine's outbox (or a latest-value call), so nothing
waits on the network.

The hub has no product catalogue: a boutique's products are the SKUs its stock stream
knows (``stock.watch``), and the boutiques are those given with ``--boutiques`` plus those
seen in conversations, orders, the wishlist and stock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from kivy.factory import Factory
from kivy.metrics import dp
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.label import Label
from kivy.uix.screenmanager import NoTransition, Screen, ScreenManager
from kivy.uix.scrollview import ScrollView

from clients.common.state import Change
from clients.common.store import ENDED_STATUSES, StockRow
from clients.ui.base import SokoApp
from clients.ui.maps import DEFAULT_ATTRIBUTION, TrackMap
from clients.ui.text import (
    boutique_of_chat,
    chat_title,
    clock_text,
    distance_text,
    eta_text,
    status_text,
    stock_text,
)
from clients.ui.theme import ACCENT, BADGE, MUTED, PRIMARY, SYMBOL_FONT, TEXT
from clients.ui.widgets import Card, ChatPanel, FlatButton, NavButton, row_card, section
from protocol.ids import StreamKind, boutique_chat, order_chat, parse_stream

TABS = (
    ("shop", "Shop"),
    ("wishlist", "Wishlist"),
    ("chats", "Chats"),
    ("orders", "Orders"),
    ("alerts", "Alerts"),
)
HEART_ON, HEART_OFF = "\u2665", "\u2661"


def product_name(sku: str) -> str:
    """A readable name for a SKU id: ``kikoy-blue_xl`` -> ``Kikoy blue xl``."""
    words = sku.replace("_", " ").replace("-", " ").split()
    return " ".join(words).capitalize() if words else sku


class ShopperApp(SokoApp):
    """See the module docstring. ``tiles``: the map's tile URL template, cached under
    ``tile_cache``, credited with ``attribution`` under the map; ``boutiques``: boutiques to
    show before anything else mentions them."""

    app_title = "Soko"

    def __init__(
        self,
        *args: Any,
        tiles: str,
        tile_cache: Path,
        attribution: str = DEFAULT_ATTRIBUTION,
        boutiques: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tiles = tiles
        self.tile_cache = tile_cache
        self.attribution = attribution
        self.given_boutiques = list(dict.fromkeys(boutiques))
        self.boutique: str | None = self.given_boutiques[0] if self.given_boutiques else None
        self.chat_stream: str | None = None
        self.order_id: str | None = None
        self.stock_labels: dict[tuple[str, str], Label] = {}
        self.heart_buttons: dict[tuple[str, str], FlatButton] = {}
        self.nav: dict[str, NavButton] = {}
        self.track_map: TrackMap | None = None
        self._watched: set[str] = set()
        self._tracked: set[str] = set()

    # ------------------------------------------------------------------ layout

    def build_body(self) -> Any:
        body = BoxLayout(orientation="vertical")
        self.sm = ScreenManager(transition=NoTransition())
        self.sm.add_widget(self._shop_screen())
        self.sm.add_widget(self._list_screen("wishlist", "wishlist_box"))
        self.sm.add_widget(self._list_screen("chats", "chats_box"))
        self.sm.add_widget(self._chat_screen())
        self.sm.add_widget(self._list_screen("orders", "orders_box"))
        self.sm.add_widget(self._order_screen())
        self.sm.add_widget(self._alerts_screen())
        body.add_widget(self.sm)
        nav = Factory.NavBar()
        for name, text in TABS:
            button = NavButton(text=text, screen=name, selected=name == "shop")
            button.bind(on_release=lambda b: self.show_tab(b.screen))
            self.nav[name] = button
            nav.add_widget(button)
        body.add_widget(nav)
        self.top_bar.title = "Soko \u00b7 Shop"
        return body

    def _list_screen(self, name: str, box: str) -> Screen:
        screen = Screen(name=name)
        area = Factory.ListArea()
        listing = Factory.ListBox()
        area.add_widget(listing)
        setattr(self, box, listing)
        screen.add_widget(area)
        return screen

    def _shop_screen(self) -> Screen:
        screen = Screen(name="shop")
        col = BoxLayout(orientation="vertical")
        strip = ScrollView(do_scroll_y=False, size_hint_y=None, height=dp(52), bar_width=0)
        self.boutique_strip = BoxLayout(size_hint_x=None, padding=(dp(8), dp(8)), spacing=dp(6))
        self.boutique_strip.bind(minimum_width=self.boutique_strip.setter("width"))
        strip.add_widget(self.boutique_strip)
        col.add_widget(strip)
        head = BoxLayout(size_hint_y=None, height=dp(48), padding=(dp(14), dp(4)), spacing=dp(8))
        self.boutique_title = Factory.Txt(text="", bold=True, font_size="18sp", height=dp(40))
        head.add_widget(self.boutique_title)
        self.boutique_chat_button = FlatButton(text="Chat with boutique", size_hint_x=None, width=dp(160))
        self.boutique_chat_button.bind(on_release=lambda *_: self.chat_with_boutique())
        head.add_widget(self.boutique_chat_button)
        col.add_widget(head)
        area = Factory.ListArea()
        self.products_box = Factory.ListBox()
        area.add_widget(self.products_box)
        col.add_widget(area)
        screen.add_widget(col)
        return screen

    def _chat_screen(self) -> Screen:
        screen = Screen(name="chat")
        self.chat_panel = ChatPanel(can_go_back=True)
        self.chat_panel.bind(
            on_send=lambda _p, text: self.send_message(text),
            on_typing=lambda _p: self.typing(),
            on_back=lambda _p: self.show_tab("chats"),
        )
        screen.add_widget(self.chat_panel)
        return screen

    def _order_screen(self) -> Screen:
        screen = Screen(name="order")
        self.order_box = BoxLayout(orientation="vertical")
        head = BoxLayout(
            size_hint_y=None, height=dp(52), padding=(dp(6), dp(4), dp(12), dp(4)), spacing=dp(6)
        )
        back = FlatButton(
            text="\u2190", font_name=SYMBOL_FONT, font_size="20sp", size_hint_x=None, width=dp(44)
        )
        back.bind(on_release=lambda *_: self.show_tab("orders"))
        head.add_widget(back)
        self.order_title = Factory.Txt(text="", bold=True, font_size="17sp", height=dp(44))
        head.add_widget(self.order_title)
        self.order_box.add_widget(head)
        self.map_holder = BoxLayout()
        self.order_box.add_widget(self.map_holder)
        credit = Factory.MutedTxt(
            text=self.attribution, font_size="11sp", halign="right", padding=(dp(8), dp(2))
        )
        self.order_box.add_widget(credit)
        info = Card(size_hint_y=None)
        self.eta_label = Factory.Txt(text="", bold=True, font_size="22sp", color=PRIMARY)
        self.order_status_label = Factory.Txt(text="", font_size="15sp")
        self.driver_label = Factory.MutedTxt(text="")
        info.add_widget(self.eta_label)
        info.add_widget(self.order_status_label)
        info.add_widget(self.driver_label)
        self.order_chat_button = FlatButton(text="Chat about this order", filled=True)
        self.order_chat_button.bind(on_release=lambda *_: self.chat_about_order())
        info.add_widget(self.order_chat_button)
        self.order_box.add_widget(info)
        screen.add_widget(self.order_box)
        return screen

    def _alerts_screen(self) -> Screen:
        screen = Screen(name="alerts")
        col = BoxLayout(orientation="vertical")
        head = BoxLayout(size_hint_y=None, height=dp(48), padding=(dp(14), dp(4)), spacing=dp(8))
        self.alerts_title = Factory.Txt(text="Notifications", bold=True, font_size="18sp", height=dp(40))
        head.add_widget(self.alerts_title)
        read_all = FlatButton(text="Mark all read", size_hint_x=None, width=dp(130))
        read_all.bind(on_release=lambda *_: self.spawn(self.mark_alerts_read()))
        head.add_widget(read_all)
        col.add_widget(head)
        area = Factory.ListArea()
        self.alerts_box = Factory.ListBox()
        area.add_widget(self.alerts_box)
        col.add_widget(area)
        screen.add_widget(col)
        return screen

    # ------------------------------------------------------------------ navigation

    def show_tab(self, name: str) -> None:
        """Show a bottom tab (``shop``, ``wishlist``, ``chats``, ``orders``, ``alerts``)."""
        self.sm.current = name
        for tab, button in self.nav.items():
            button.selected = tab == name
        self.top_bar.title = "Soko \u00b7 " + dict(TABS)[name]
        if name != "chat":
            self.chat_stream = None
        if name == "orders":
            self.order_id = None
        self.refresh(name if name != "shop" else "products")

    def open_boutique(self, boutique: str) -> None:
        self.boutique = boutique
        self.refresh("boutiques", "products")

    def open_in_shop(self, boutique: str) -> None:
        self.open_boutique(boutique)
        self.show_tab("shop")

    def chat_about_order(self) -> None:
        if self.order_id is not None:
            self.open_chat(order_chat(self.order_id))

    def chat_with_boutique(self) -> None:
        if self.boutique is not None:
            self.open_chat(boutique_chat(self.boutique, self.me))

    def open_chat(self, stream: str) -> None:
        """Open a conversation (it need not exist at the hub yet: the first message creates it)."""
        self.chat_stream = stream
        self.chat_panel.stream = stream
        self.chat_panel.title = chat_title(stream, self.me)
        self.chat_panel.typing_text = ""
        self.sm.current = "chat"
        for tab, button in self.nav.items():
            button.selected = tab == "chats"
        self.top_bar.title = "Soko \u00b7 Chats"
        self.refresh("chat")

    def open_order(self, order_id: str) -> None:
        """Show an order: its status, ETA and the driver on the map."""
        self.order_id = order_id
        self.engine.watch_track(order_id)
        self._tracked.add(order_id)
        if self.track_map is not None:
            self.track_map.hide_driver()
        self.sm.current = "order"
        for tab, button in self.nav.items():
            button.selected = tab == "orders"
        self.refresh("order")

    async def _map(self) -> TrackMap:
        if self.track_map is None:
            await asyncio.to_thread(self.tile_cache.mkdir, parents=True, exist_ok=True)
            if self.track_map is None:
                self.track_map = TrackMap(self.tiles, self.tile_cache)
                self.map_holder.add_widget(self.track_map)
        return self.track_map

    # ------------------------------------------------------------------ actions

    def typing(self) -> None:
        if self.chat_stream is not None:
            self.engine.typing(self.chat_stream)

    def send_message(self, text: str) -> None:
        if self.chat_stream is not None:
            self.spawn(self.engine.send_chat(self.chat_stream, text))

    def toggle_wishlist(self, boutique: str, sku: str, wished: bool) -> None:
        if wished:
            self.spawn(self.engine.wishlist_remove(boutique, sku))
        else:
            self.spawn(self.engine.wishlist_add(boutique, sku))

    async def mark_alerts_read(self) -> None:
        newest: dict[str, int] = {}
        for n in await self.store.notifications():
            newest[n.stream] = max(newest.get(n.stream, 0), n.seq)
        for stream, seq in newest.items():
            await self.engine.mark_read(stream, seq)

    # ------------------------------------------------------------------ engine changes

    def all_parts(self) -> Iterable[str]:
        return ("boutiques", "products", "wishlist", "chats", "orders", "alerts")

    def parts_for(self, change: Change) -> Iterable[str]:
        kind, stream = change.kind, change.stream
        if kind in ("entries", "outbox", "read") and stream is not None:
            if parse_stream(stream).kind in (StreamKind.USER_INBOX, StreamKind.BOUTIQUE_INBOX):
                return ("alerts",)
            return ("chats", "chat", "boutiques") if stream == self.chat_stream else ("chats", "boutiques")
        if kind in ("outbox", "wishlist"):
            return ("wishlist", "products")
        if kind == "stock":
            return ("products", "wishlist", "boutiques")
        if kind == "position":
            return ("order", "orders")
        if kind == "order":
            return ("orders", "order", "boutiques")
        if kind == "badge":
            return ("alerts",)
        if kind == "conversations":
            return ("chats", "boutiques")
        return ()

    def on_change(self, change: Change) -> None:
        if (
            change.kind == "typing"
            and change.stream == self.chat_stream
            and change.user is not None
            and change.user != self.me
        ):
            self.chat_panel.show_typing(change.user)

    # ------------------------------------------------------------------ refreshers

    async def refresh_boutiques(self) -> None:
        known = list(self.given_boutiques)
        known += await self.store.boutiques()
        for conv in await self.store.conversations():
            chatting = boutique_of_chat(conv.stream)
            if chatting is not None:
                known.append(chatting)
        known = list(dict.fromkeys(known))
        for b in known:
            if b not in self._watched:
                self._watched.add(b)
                self.engine.watch_stock(b)
        if self.boutique is None and known:
            self.boutique = known[0]
            self.refresh("products")
        if self.unchanged("boutiques", (known, self.boutique)):
            return
        self.boutique_strip.clear_widgets()
        for b in known:
            chip = FlatButton(
                text=b,
                filled=b == self.boutique,
                size_hint_x=None,
                width=dp(18) + dp(9) * len(b),
                height=dp(36),
            )
            chip.bind(on_release=lambda _c, b=b: self.open_boutique(b))
            self.boutique_strip.add_widget(chip)

    async def refresh_products(self) -> None:
        b = self.boutique
        rows = await self.store.stock(b) if b is not None else []
        wished = {(w.boutique_id, w.sku) for w in await self.store.wishlist()}
        if b != self.boutique or self.unchanged("products", (b, rows, wished)):
            return
        box = self.products_box
        box.clear_widgets()
        self.stock_labels.clear()
        self.heart_buttons.clear()
        self.boutique_title.text = b or "No boutique yet"
        self.boutique_chat_button.disabled = b is None
        if b is None:
            box.add_widget(
                row_card("No boutiques yet", "Start with --boutiques, or open a chat or an order.")
            )
            return
        if not rows:
            box.add_widget(
                row_card("Loading products\u2026", "Products appear once the boutique's stock is known.")
            )
        for row in rows:
            box.add_widget(self._product_row(row, (row.boutique_id, row.sku) in wished))

    def _product_row(self, row: StockRow, wished: bool) -> Card:
        card = Card(orientation="horizontal", spacing=dp(8))
        text = BoxLayout(orientation="vertical", size_hint_y=None, height=dp(46))
        text.add_widget(Factory.Txt(text=product_name(row.sku), bold=True, font_size="16sp", height=dp(24)))
        level = Factory.Txt(
            text=stock_text(row.level),
            font_size="14sp",
            height=dp(22),
            color=BADGE if row.level <= 0 else (ACCENT if row.level <= 5 else MUTED),
        )
        text.add_widget(level)
        self.stock_labels[(row.boutique_id, row.sku)] = level
        card.add_widget(text)
        heart = FlatButton(
            text=HEART_ON if wished else HEART_OFF,
            font_name=SYMBOL_FONT,
            font_size="24sp",
            tint=ACCENT,
            outline=False,
            size_hint=(None, None),
            size=(dp(48), dp(46)),
        )
        heart.bind(on_release=lambda *_: self.toggle_wishlist(row.boutique_id, row.sku, wished))
        self.heart_buttons[(row.boutique_id, row.sku)] = heart
        card.add_widget(heart)
        return card

    async def refresh_wishlist(self) -> None:
        items = await self.store.wishlist()
        levels = []
        for w in items:
            stock = await self.store.stock_item(w.boutique_id, w.sku)
            levels.append(stock.level if stock is not None else w.level)
        if self.unchanged("wishlist", (items, levels)):
            return
        box = self.wishlist_box
        box.clear_widgets()
        if not items:
            box.add_widget(
                row_card("Your wishlist is empty", f"Tap {HEART_OFF} on a product to keep it here.")
            )
        for w, level in zip(items, levels, strict=True):
            note = "saving\u2026" if w.pending else stock_text(level)
            card = row_card(
                product_name(w.sku),
                f"at {w.boutique_id}",
                note,
                right_color=BADGE if level is not None and level <= 0 else MUTED,
                on_tap=partial(self.open_in_shop, w.boutique_id),
            )
            box.add_widget(card)

    async def refresh_chats(self) -> None:
        conversations = await self.store.conversations()
        self.nav["chats"].badge = sum(c.unread for c in conversations)
        if self.unchanged("chats", conversations):
            return
        box = self.chats_box
        box.clear_widgets()
        if not conversations:
            box.add_widget(
                row_card("No conversations yet", "Open a boutique and tap \u201cChat with boutique\u201d.")
            )
        for c in conversations:
            last = c.last_text or ""
            if c.pending:
                last = f"({c.pending} sending) {last}"
            box.add_widget(
                row_card(
                    chat_title(c.stream, self.me),
                    last,
                    clock_text(c.last_ts) if c.last_ts else "",
                    badge=c.unread,
                    bold=c.unread > 0,
                    on_tap=partial(self.open_chat, c.stream),
                )
            )

    async def refresh_chat(self) -> None:
        stream = self.chat_stream
        if stream is None:
            return
        messages = await self.store.messages(stream)
        peer_read = 0
        for c in await self.store.conversations():
            if c.stream == stream:
                peer_read = c.peer_read_seq
        if stream != self.chat_stream:
            return
        if not self.unchanged("chat", (stream, messages, peer_read)):
            self.chat_panel.show(messages, peer_read)
        theirs = [m.seq for m in messages if not m.mine and m.seq is not None]
        if theirs:
            await self.engine.mark_read(stream, max(theirs))

    async def refresh_orders(self) -> None:
        orders = await self.store.orders()
        etas: dict[str, int | None] = {}
        for o in orders:
            if o.status not in ENDED_STATUSES and o.driver_id:
                if o.order_id not in self._tracked:
                    self._tracked.add(o.order_id)
                    self.engine.watch_track(o.order_id)
                position = await self.store.position(o.order_id)
                etas[o.order_id] = position.eta_seconds if position is not None else None
        if self.unchanged("orders", (orders, etas)):
            return
        box = self.orders_box
        box.clear_widgets()
        if not orders:
            box.add_widget(row_card("No orders yet", "Your orders and their drivers show up here."))
        current = [o for o in orders if o.status not in ENDED_STATUSES]
        past = [o for o in orders if o.status in ENDED_STATUSES]
        for title, group in (("In progress", current), ("Past orders", past)):
            if group:
                box.add_widget(section(title))
            for o in group:
                eta = etas.get(o.order_id)
                note = eta_text(eta) if eta is not None else ""
                box.add_widget(
                    row_card(
                        f"Order {o.order_id}",
                        f"{o.boutique_id} \u00b7 {status_text(o.status)}",
                        note,
                        right_color=PRIMARY,
                        on_tap=partial(self.open_order, o.order_id),
                    )
                )

    async def refresh_order(self) -> None:
        order_id = self.order_id
        if order_id is None:
            return
        order = await self.store.order(order_id)
        position = await self.store.position(order_id)
        track_map = await self._map()
        if order_id != self.order_id:
            return
        self.order_title.text = f"Order {order_id}" + (f" \u00b7 {order.boutique_id}" if order else "")
        self.order_status_label.text = status_text(order.status if order else None)
        ended = order is not None and order.status in ENDED_STATUSES
        if position is not None and not ended:
            eta = eta_text(position.eta_seconds)
            away = distance_text(position.eta_distance_m)
            self.eta_label.text = f"ETA {eta}" + (f" \u00b7 {away}" if away else "")
            self.driver_label.text = (
                f"Driver {position.driver_id} \u00b7 position at {clock_text(position.ts)}"
            )
            track_map.show_driver(position.lat, position.lon)
        else:
            self.eta_label.text = (
                "Delivered" if order and order.status == "delivered" else "Waiting for the driver"
            )
            self.driver_label.text = (
                f"Driver {order.driver_id}" if order and order.driver_id else "No driver yet"
            )
            track_map.hide_driver()

    async def refresh_alerts(self) -> None:
        badge = await self.store.badge()
        items = await self.store.notifications()
        self.nav["alerts"].badge = badge
        self.alerts_title.text = f"Notifications ({badge} new)" if badge else "Notifications"
        if self.unchanged("alerts", items):
            return
        box = self.alerts_box
        box.clear_widgets()
        if not items:
            box.add_widget(row_card("Nothing yet", "Order, delivery and stock news arrive here."))
        for n in items:
            box.add_widget(
                row_card(
                    n.title,
                    n.body or n.category.capitalize(),
                    clock_text(n.ts),
                    bold=not n.read,
                    right_color=TEXT if not n.read else MUTED,
                )
            )
