"""Kivy widgets shared by the shopper and driver apps: theme, top bar, sync pill, badges,
list rows and the chat panel.

Widgets only display what they are given and report what the user did through callbacks;
they never touch the engine or the store (the apps do, in :mod:`clients.ui.base`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from kivy.clock import Clock
from kivy.lang import Builder
from kivy.metrics import dp
from kivy.properties import (
    BooleanProperty,
    ColorProperty,
    NumericProperty,
    ObjectProperty,
    StringProperty,
)
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.label import Label

from clients.common.store import Message
from clients.ui.text import clock_text, message_mark
from clients.ui.theme import MARK_COLORS, MARK_SYMBOLS, MUTED, PHASE_COLORS, PRIMARY, SURFACE

KV = """
#:import PRIMARY clients.ui.theme.PRIMARY
#:import BACKGROUND clients.ui.theme.BACKGROUND
#:import SURFACE clients.ui.theme.SURFACE
#:import TEXT clients.ui.theme.TEXT
#:import MUTED clients.ui.theme.MUTED
#:import BADGE clients.ui.theme.BADGE
#:import SYMBOL_FONT clients.ui.theme.SYMBOL_FONT

<Screenful@BoxLayout>:
    orientation: "vertical"
    canvas.before:
        Color:
            rgba: BACKGROUND
        Rectangle:
            pos: self.pos
            size: self.size

<Txt@Label>:
    color: TEXT
    halign: "left"
    valign: "middle"
    text_size: self.width, None
    size_hint_y: None
    height: self.texture_size[1]
    shorten: True
    shorten_from: "right"

<MutedTxt@Txt>:
    color: MUTED
    font_size: "13sp"

<FlatButton>:
    background_normal: ""
    background_down: ""
    background_disabled_normal: ""
    background_color: (0, 0, 0, 0)
    color: (1, 1, 1, 1) if self.filled else self.tint
    disabled_color: (1, 1, 1, 0.7) if self.filled else (0.6, 0.6, 0.6, 1)
    bold: True
    font_size: "14sp"
    size_hint_y: None
    height: dp(40)
    canvas.before:
        Color:
            rgba: (self.tint if not self.disabled else (0.78, 0.78, 0.76, 1)) if self.filled else (0, 0, 0, 0)
        RoundedRectangle:
            pos: self.x + dp(2), self.y + dp(2)
            size: self.width - dp(4), self.height - dp(4)
            radius: [dp(8)]
        Color:
            rgba: (0, 0, 0, 0.10 if self.state == "down" else 0)
        RoundedRectangle:
            pos: self.x + dp(2), self.y + dp(2)
            size: self.width - dp(4), self.height - dp(4)
            radius: [dp(8)]
        Color:
            rgba: (0, 0, 0, 0) if self.filled or not self.outline else self.tint
        Line:
            rounded_rectangle: self.x + dp(2), self.y + dp(2), self.width - dp(4), self.height - dp(4), dp(8)
            width: dp(1)

<TopBar>:
    size_hint_y: None
    height: dp(56)
    padding: dp(14), dp(8)
    spacing: dp(8)
    canvas.before:
        Color:
            rgba: PRIMARY
        Rectangle:
            pos: self.pos
            size: self.size
    Label:
        text: root.title
        bold: True
        font_size: "19sp"
        color: (1, 1, 1, 1)
        halign: "left"
        valign: "middle"
        text_size: self.size
        shorten: True
    SyncPill:
        id: pill
        phase: root.phase
        text: root.sync_label

<SyncPill>:
    size_hint: None, None
    size: max(dp(64), self.texture_size[0] + dp(22)), dp(26)
    pos_hint: {"center_y": 0.5}
    font_size: "12sp"
    bold: True
    color: (1, 1, 1, 1)
    canvas.before:
        Color:
            rgba: self.pill_color
        RoundedRectangle:
            pos: self.pos
            size: self.size
            radius: [self.height / 2]

<Badge>:
    size_hint: None, None
    size: (max(dp(20), self.texture_size[0] + dp(10)), dp(20)) if self.count else (0, 0)
    opacity: 1 if self.count else 0
    text: str(self.count) if self.count < 100 else "99+"
    font_size: "11sp"
    bold: True
    color: (1, 1, 1, 1)
    canvas.before:
        Color:
            rgba: BADGE
        RoundedRectangle:
            pos: self.pos
            size: self.size
            radius: [self.height / 2]

<NavButton>:
    orientation: "vertical"
    padding: 0, dp(6), 0, dp(4)
    canvas.before:
        Color:
            rgba: SURFACE
        Rectangle:
            pos: self.pos
            size: self.size
        Color:
            rgba: PRIMARY if self.selected else (0, 0, 0, 0)
        Rectangle:
            pos: self.x + dp(10), self.top - dp(3)
            size: self.width - dp(20), dp(3)
    AnchorLayout:
        anchor_x: "center"
        BoxLayout:
            size_hint: None, None
            size: label.texture_size[0] + badge.width + dp(4), dp(22)
            spacing: dp(4)
            Label:
                id: label
                text: root.text
                size_hint_x: None
                width: self.texture_size[0]
                color: PRIMARY if root.selected else MUTED
                bold: root.selected
                font_size: "13sp"
            Badge:
                id: badge
                count: root.badge
                pos_hint: {"center_y": 0.5}

<NavBar@BoxLayout>:
    size_hint_y: None
    height: dp(54)
    canvas.before:
        Color:
            rgba: (0.85, 0.84, 0.83, 1)
        Rectangle:
            pos: self.x, self.top - dp(1)
            size: self.width, dp(1)

<Card>:
    orientation: "vertical"
    size_hint_y: None
    height: self.minimum_height
    padding: dp(14), dp(10)
    spacing: dp(4)
    canvas.before:
        Color:
            rgba: (0, 0, 0, 0.06)
        RoundedRectangle:
            pos: self.x, self.y - dp(1)
            size: self.size
            radius: [dp(10)]
        Color:
            rgba: self.fill
        RoundedRectangle:
            pos: self.pos
            size: self.size
            radius: [dp(10)]

<ListArea@ScrollView>:
    do_scroll_x: False
    bar_width: dp(4)

<ListBox@GridLayout>:
    cols: 1
    size_hint_y: None
    height: self.minimum_height
    padding: dp(10)
    spacing: dp(8)

<SectionTitle@Label>:
    color: MUTED
    bold: True
    font_size: "13sp"
    halign: "left"
    valign: "bottom"
    text_size: self.size
    size_hint_y: None
    height: dp(26)
    padding: dp(14), 0

<Bubble>:
    size_hint_y: None
    height: box.height + dp(4)
    AnchorLayout:
        anchor_x: "right" if root.mine else "left"
        BoxLayout:
            id: box
            orientation: "vertical"
            size_hint: None, None
            width: min(root.width * 0.8, max(body.texture_size[0], meta.texture_size[0]) + dp(24))
            height: body.height + meta.height + dp(16)
            padding: dp(12), dp(8)
            canvas.before:
                Color:
                    rgba: PRIMARY if root.mine else SURFACE
                RoundedRectangle:
                    pos: self.pos
                    size: self.size
                    radius: [dp(14), dp(14), dp(4) if root.mine else dp(14), dp(14) if root.mine else dp(4)]
            Label:
                id: body
                text: root.text
                color: (1, 1, 1, 1) if root.mine else TEXT
                text_size: root.width * 0.8 - dp(24), None
                size_hint: None, None
                size: self.texture_size
                halign: "left"
            Label:
                id: meta
                markup: True
                text: root.meta
                font_name: SYMBOL_FONT
                font_size: "11sp"
                color: root.mark_color if root.mine else MUTED
                size_hint: None, None
                size: self.texture_size
                pos_hint: {"right": 1} if root.mine else {"x": 0}

<ChatPanel>:
    orientation: "vertical"
    canvas.before:
        Color:
            rgba: (0.93, 0.94, 0.93, 1)
        Rectangle:
            pos: self.pos
            size: self.size
    BoxLayout:
        size_hint_y: None
        height: dp(52)
        padding: dp(6), dp(4), dp(12), dp(4)
        spacing: dp(6)
        canvas.before:
            Color:
                rgba: SURFACE
            Rectangle:
                pos: self.pos
                size: self.size
        FlatButton:
            text: "\u2190"
            font_name: SYMBOL_FONT
            font_size: "20sp"
            size_hint_x: None
            width: dp(44) if root.can_go_back else 0
            opacity: 1 if root.can_go_back else 0
            disabled: not root.can_go_back
            on_release: root.dispatch("on_back")
        BoxLayout:
            orientation: "vertical"
            Label:
                text: root.title
                bold: True
                color: TEXT
                halign: "left"
                valign: "middle"
                text_size: self.size
                shorten: True
            Label:
                id: typing
                text: root.typing_text
                color: PRIMARY
                italic: True
                font_size: "12sp"
                halign: "left"
                valign: "top"
                text_size: self.size
                size_hint_y: 0.8 if root.typing_text else 0.01
    ScrollView:
        id: scroll
        do_scroll_x: False
        bar_width: dp(4)
        GridLayout:
            id: messages
            cols: 1
            size_hint_y: None
            height: self.minimum_height
            padding: dp(10)
            spacing: dp(6)
    BoxLayout:
        size_hint_y: None
        height: dp(56)
        padding: dp(8)
        spacing: dp(8)
        canvas.before:
            Color:
                rgba: SURFACE
            Rectangle:
                pos: self.pos
                size: self.size
        TextInput:
            id: entry
            hint_text: root.hint
            multiline: False
            write_tab: False
            padding: dp(10), dp(10)
            background_normal: ""
            background_active: ""
            background_color: (0.95, 0.95, 0.94, 1)
            on_text: root.text_changed(self.text)
            on_text_validate: root.submit()
        FlatButton:
            id: send
            text: "Send"
            filled: True
            size_hint_x: None
            width: dp(76)
            height: dp(40)
            on_release: root.submit()
"""


class FlatButton(ButtonBehavior, Label):  # type: ignore[misc]
    """A flat button: ``filled`` with ``tint`` as background, else ``tint`` text (``outline``d
    unless told otherwise)."""

    tint = ColorProperty(PRIMARY)
    filled = BooleanProperty(False)
    outline = BooleanProperty(True)


class TopBar(BoxLayout):  # type: ignore[misc]
    """The app bar: a title and the sync state pill (``offline / connecting / syncing n/N / live``)."""

    title = StringProperty("")
    phase = StringProperty("offline")
    sync_label = StringProperty("offline")


class SyncPill(Label):  # type: ignore[misc]
    phase = StringProperty("offline")
    pill_color = ColorProperty(PHASE_COLORS["offline"])

    def on_phase(self, _w: Any, phase: str) -> None:
        self.pill_color = PHASE_COLORS.get(phase, PHASE_COLORS["offline"])


class Badge(Label):  # type: ignore[misc]
    """A red count bubble, invisible (and sized 0) at 0."""

    count = NumericProperty(0)


class NavButton(ButtonBehavior, BoxLayout):  # type: ignore[misc]
    """One tab of the bottom navigation, with its badge."""

    text = StringProperty("")
    badge = NumericProperty(0)
    selected = BooleanProperty(False)
    screen = StringProperty("")


class Card(BoxLayout):  # type: ignore[misc]
    fill = ColorProperty(SURFACE)


class TappableCard(ButtonBehavior, Card):  # type: ignore[misc]
    """A card that reports taps (``on_release``)."""


class Bubble(BoxLayout):  # type: ignore[misc]
    """One chat message. For our own messages ``mark`` is ``sending``, ``delivered``, ``read``
    or ``not sent`` (see :func:`clients.ui.text.message_mark`); empty for the other side's."""

    text = StringProperty("")
    mine = BooleanProperty(False)
    mark = StringProperty("")
    meta = StringProperty("")
    mark_color = ColorProperty(MARK_COLORS["delivered"])
    client_id = StringProperty("")
    seq = NumericProperty(0)


class ChatPanel(BoxLayout):  # type: ignore[misc]
    """A conversation: header (title, "typing..."), messages, an entry and Send.

    Events: ``on_send(text)`` when the user sends a non-blank text (the entry is then
    cleared), ``on_typing()`` at most every ``TYPING_EVERY_S`` while the user types,
    ``on_back()`` for the back arrow (shown when ``can_go_back``).
    """

    TYPING_EVERY_S = 2.0
    TYPING_SHOWN_S = 4.0

    title = StringProperty("")
    hint = StringProperty("Write a message")
    typing_text = StringProperty("")
    can_go_back = BooleanProperty(False)
    stream = StringProperty("")
    me = ObjectProperty(None, allownone=True)

    __events__ = ("on_send", "on_typing", "on_back")

    def __init__(self, **kwargs: Any) -> None:
        self._last_typing = 0.0
        self._typing_clear: Any = None
        super().__init__(**kwargs)

    @property
    def bubbles(self) -> list[Bubble]:
        """The message bubbles, oldest first."""
        return list(reversed(self.ids.messages.children))

    def show(self, messages: Sequence[Message], peer_read_seq: int) -> None:
        """Render ``messages`` (as :meth:`LocalStore.messages` returns them), keeping the view at
        the bottom when it was there."""
        box = self.ids.messages
        at_bottom = self.ids.scroll.scroll_y <= 0.01 or box.height <= self.ids.scroll.height
        box.clear_widgets()
        for m in messages:
            mark = message_mark(m.status, m.seq, peer_read_seq) if m.mine else ""
            when = clock_text(m.ts)
            meta = f"{when}  {MARK_SYMBOLS[mark]} {mark}" if mark else f"{m.author}  {when}"
            box.add_widget(
                Bubble(
                    text=m.text,
                    mine=m.mine,
                    mark=mark,
                    meta=meta,
                    mark_color=MARK_COLORS.get(mark, MARK_COLORS["delivered"]),
                    client_id=m.client_id,
                    seq=m.seq or 0,
                )
            )
        if at_bottom:
            Clock.schedule_once(lambda _dt: setattr(self.ids.scroll, "scroll_y", 0), 0)

    def show_typing(self, who: str) -> None:
        """Show "<who> is typing..." for a few seconds."""
        self.typing_text = f"{who} is typing\u2026"
        if self._typing_clear is not None:
            self._typing_clear.cancel()
        self._typing_clear = Clock.schedule_once(
            lambda _dt: setattr(self, "typing_text", ""), self.TYPING_SHOWN_S
        )

    def submit(self) -> None:
        text = self.ids.entry.text.strip()
        if text:
            self.ids.entry.text = ""
            self.dispatch("on_send", text)

    def text_changed(self, text: str) -> None:
        now = time.monotonic()
        if text and now - self._last_typing >= self.TYPING_EVERY_S:
            self._last_typing = now
            self.dispatch("on_typing")

    def on_send(self, text: str) -> None:
        pass

    def on_typing(self) -> None:
        pass

    def on_back(self) -> None:
        pass


def section(text: str) -> Label:
    from kivy.factory import Factory

    return Factory.SectionTitle(text=text)


def row_card(
    title: str,
    subtitle: str = "",
    right: str = "",
    *,
    on_tap: Callable[[], None] | None = None,
    badge: int = 0,
    bold: bool = False,
    right_color: Sequence[float] = MUTED,
) -> Card:
    """A list row: title (and badge), subtitle, a right-hand note; tappable when ``on_tap``."""
    from kivy.factory import Factory

    card: Card = TappableCard() if on_tap else Card()
    if on_tap is not None:
        card.bind(on_release=lambda *_: on_tap())
    top = BoxLayout(size_hint_y=None, height=dp(24), spacing=dp(6))
    top.add_widget(Factory.Txt(text=title, bold=bold, font_size="16sp", height=dp(24)))
    if right:
        note = Factory.Txt(
            text=right, halign="right", color=right_color, font_size="13sp", size_hint_x=0.55, height=dp(24)
        )
        top.add_widget(note)
    if badge:
        top.add_widget(Badge(count=badge, pos_hint={"center_y": 0.5}))
    card.add_widget(top)
    if subtitle:
        card.add_widget(Factory.MutedTxt(text=subtitle))
    return card


Builder.load_string(KV)
