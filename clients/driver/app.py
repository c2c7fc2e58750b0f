"""The driver app: go on and off duty, the job list from ``delivery.assigned``, delivery steps
through the outbox, chat with the customer of the current order, and GPS streaming.

Job steps (accept, picked up, delivered) are outbox writes: shown at once, sent when the
hub is reachable, never lost. Positions are latest values: the GPS source keeps running,
and while on duty each fix goes to ``engine.send_location``, which keeps only the newest
one while offline and sends only that one on reconnect. Off duty, fixes are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

from kivy.factory import Factory
from kivy.metrics import dp
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.screenmanager import NoTransition, Screen, ScreenManager

from clients.common.state import Change
from clients.common.store import ENDED_STATUSES, Job
from clients.driver.gps import GpsSource, GpsUnavailableError
from clients.ui.base import SokoApp
from clients.ui.text import NEXT_STEP, job_line
from clients.ui.theme import ACCENT, MUTED, PRIMARY
from clients.ui.widgets import Card, ChatPanel, FlatButton, NavButton, row_card, section
from protocol.ids import order_chat

ON_DUTY_KEY = "driver.on_duty"
"""Store key remembering whether the driver was on duty when the app last ran."""
STEP_BUTTON_TEXT = {"accepted": "Accept job", "picked_up": "Picked up", "delivered": "Delivered"}


class DriverApp(SokoApp):
    """See the module docstring. ``gps``: where fixes come from (None: no GPS at all)."""

    app_title = "Soko Driver"

    def __init__(self, *args: Any, gps: GpsSource | None, on_duty: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gps = gps
        self.on_duty = on_duty
        self.current_order: str | None = None
        self.step_buttons: dict[str, FlatButton] = {}
        self.job_cards: dict[str, Card] = {}
        self.fixes_sent = 0
        self.last_fix: Any = None
        self._gps_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ layout

    def build_body(self) -> Any:
        body = BoxLayout(orientation="vertical")
        duty = Card(orientation="horizontal", size_hint_y=None, spacing=dp(10), fill=(1, 1, 1, 1))
        texts = BoxLayout(orientation="vertical", size_hint_y=None, height=dp(46))
        self.duty_label = Factory.Txt(text="", bold=True, font_size="16sp", height=dp(24))
        self.gps_label = Factory.MutedTxt(text="", height=dp(20))
        texts.add_widget(self.duty_label)
        texts.add_widget(self.gps_label)
        duty.add_widget(texts)
        self.duty_button = FlatButton(filled=True, size_hint=(None, None), size=(dp(120), dp(44)))
        self.duty_button.bind(on_release=lambda *_: self.set_on_duty(not self.on_duty))
        duty.add_widget(self.duty_button)
        holder = BoxLayout(size_hint_y=None, height=dp(78), padding=(dp(8), dp(8), dp(8), dp(2)))
        holder.add_widget(duty)
        body.add_widget(holder)

        self.sm = ScreenManager(transition=NoTransition())
        jobs = Screen(name="jobs")
        area = Factory.ListArea()
        self.jobs_box = Factory.ListBox()
        area.add_widget(self.jobs_box)
        jobs.add_widget(area)
        self.sm.add_widget(jobs)
        chat = Screen(name="chat")
        self.chat_panel = ChatPanel(hint="Message the customer")
        self.chat_panel.bind(
            on_send=lambda _p, text: self.send_message(text),
            on_typing=lambda _p: self.typing(),
        )
        chat.add_widget(self.chat_panel)
        self.sm.add_widget(chat)
        body.add_widget(self.sm)

        nav = Factory.NavBar()
        self.nav: dict[str, NavButton] = {}
        for name, text in (("jobs", "Jobs"), ("chat", "Customer chat")):
            button = NavButton(text=text, screen=name, selected=name == "jobs")
            button.bind(on_release=lambda b: self.show_tab(b.screen))
            self.nav[name] = button
            nav.add_widget(button)
        body.add_widget(nav)
        self._show_duty()
        return body

    def on_start(self) -> None:
        if self.gps is not None:
            self._gps_task = self.spawn(self._stream_gps())

    def on_stop(self) -> None:
        super().on_stop()
        if self._gps_task is not None:
            self._gps_task.cancel()

    # ------------------------------------------------------------------ duty and GPS

    def set_on_duty(self, on_duty: bool) -> None:
        """Go online (connect, take jobs, share location) or offline (disconnect; steps and
        messages still queue, location is not shared)."""
        self.on_duty = on_duty
        self.engine.set_online(on_duty)
        self.spawn(self.store.put(ON_DUTY_KEY, on_duty))
        self._show_duty()

    def _show_duty(self) -> None:
        self.duty_label.text = "On duty" if self.on_duty else "Off duty"
        self.duty_label.color = PRIMARY if self.on_duty else MUTED
        self.duty_button.text = "Go offline" if self.on_duty else "Go online"
        self.duty_button.tint = MUTED if self.on_duty else PRIMARY
        if self.gps is None:
            self.gps_label.text = "No GPS source"
        elif not self.on_duty:
            self.gps_label.text = "Location not shared while off duty"
        elif self.last_fix is None:
            self.gps_label.text = f"Waiting for a fix \u00b7 {self.gps.description}"
        else:
            self._show_fix()

    def _show_fix(self) -> None:
        fix = self.last_fix
        answer = self.engine.last_location
        if answer is None:
            verdict = "waiting for the hub"
        elif answer.kept:
            verdict = "shared"
        else:
            verdict = f"skipped ({answer.reason})"
        stamp = time.strftime("%H:%M:%S", time.localtime(fix.ts / 1000))
        self.gps_label.text = f"Location {verdict} \u00b7 fix at {stamp}"

    async def _stream_gps(self) -> None:
        assert self.gps is not None
        try:
            async for fix in self.gps.fixes():
                if not self.on_duty:
                    continue
                self.engine.send_location(fix)
                self.fixes_sent += 1
                self.last_fix = fix
                self._show_fix()
        except GpsUnavailableError as exc:
            self.gps_label.text = f"GPS unavailable: {exc}"
            return
        if self.on_duty:
            self.gps_label.text = "Route finished \u00b7 " + self.gps_label.text

    # ------------------------------------------------------------------ navigation and actions

    def show_tab(self, name: str) -> None:
        self.sm.current = name
        for tab, button in self.nav.items():
            button.selected = tab == name
        self.refresh("chat" if name == "chat" else "jobs")

    def open_chat(self, order_id: str) -> None:
        """Make ``order_id`` the current order and show the chat with its customer."""
        self.current_order = order_id
        self.show_tab("chat")

    def take_step(self, order_id: str, step: str) -> None:
        """Record a delivery step (``accepted``, ``picked_up``, ``delivered``) through the outbox."""
        if step == "accepted":
            self.current_order = order_id
        self.spawn(self.engine.update_delivery(order_id, step))  # type: ignore[arg-type]

    def typing(self) -> None:
        if self.current_order is not None:
            self.engine.typing(order_chat(self.current_order))

    def send_message(self, text: str) -> None:
        if self.current_order is not None:
            self.spawn(self.engine.send_chat(order_chat(self.current_order), text))

    # ------------------------------------------------------------------ engine changes

    def all_parts(self) -> Iterable[str]:
        return ("jobs", "chat")

    def parts_for(self, change: Change) -> Iterable[str]:
        if change.kind in ("job", "order"):
            return ("jobs", "chat")
        if change.kind == "outbox" and change.order_id is not None:
            return ("jobs",)
        if change.kind in ("entries", "outbox", "read") and change.stream is not None:
            return ("chat",) if change.stream.startswith("chat:o:") else ()
        if change.kind == "state" and self.last_fix is not None and self.on_duty:
            self._show_fix()
        return ()

    def on_change(self, change: Change) -> None:
        if (
            change.kind == "typing"
            and self.current_order is not None
            and change.stream == order_chat(self.current_order)
            and change.user not in (None, self.me)
        ):
            self.chat_panel.show_typing("The customer")

    # ------------------------------------------------------------------ refreshers

    async def refresh_jobs(self) -> None:
        jobs = await self.store.jobs()
        if self.current_order is None or self.current_order not in {j.order_id for j in jobs}:
            active = [
                j for j in jobs if j.status not in ENDED_STATUSES and j.step in ("accepted", "picked_up")
            ]
            self.current_order = active[0].order_id if active else None
        open_jobs = [j for j in jobs if j.status not in ENDED_STATUSES]
        self.nav["jobs"].badge = sum(1 for j in open_jobs if j.step is None)
        if self.unchanged("jobs", (jobs, self.current_order)):
            return
        box = self.jobs_box
        box.clear_widgets()
        self.step_buttons.clear()
        self.job_cards.clear()
        if not jobs:
            box.add_widget(row_card("No jobs yet", "New deliveries assigned to you appear here."))
        done = [j for j in jobs if j.status in ENDED_STATUSES]
        for title, group in (("Jobs", open_jobs), ("Finished", done)):
            if group:
                box.add_widget(section(title))
            for job in group:
                box.add_widget(self._job_card(job))

    def _job_card(self, job: Job) -> Card:
        current = job.order_id == self.current_order
        card = Card(fill=(0.92, 0.97, 0.96, 1) if current else (1, 1, 1, 1))
        top = BoxLayout(size_hint_y=None, height=dp(24))
        top.add_widget(Factory.Txt(text=f"Order {job.order_id}", bold=True, font_size="16sp", height=dp(24)))
        if current:
            top.add_widget(
                Factory.Txt(text="current", color=PRIMARY, halign="right", font_size="13sp", height=dp(24))
            )
        card.add_widget(top)
        where = f"Pick up at {job.boutique_id}" if job.boutique_id else "Boutique not known yet"
        card.add_widget(Factory.MutedTxt(text=where))
        card.add_widget(Factory.Txt(text=job_line(job), font_size="14sp", color=MUTED))
        next_step = None if job.status in ENDED_STATUSES else NEXT_STEP.get(job.step)
        buttons = BoxLayout(size_hint_y=None, height=dp(44), spacing=dp(8))
        if next_step is not None:
            step = FlatButton(
                text=STEP_BUTTON_TEXT[next_step],
                filled=True,
                tint=ACCENT if next_step == "accepted" else PRIMARY,
            )
            step.bind(on_release=lambda *_: self.take_step(job.order_id, next_step))
            self.step_buttons[job.order_id] = step
            buttons.add_widget(step)
        chat = FlatButton(text="Chat with customer")
        chat.bind(on_release=lambda *_: self.open_chat(job.order_id))
        buttons.add_widget(chat)
        card.add_widget(buttons)
        self.job_cards[job.order_id] = card
        return card

    async def refresh_chat(self) -> None:
        order_id = self.current_order
        panel = self.chat_panel
        if order_id is None:
            panel.title = "No current order"
            panel.stream = ""
            panel.show([], 0)
            return
        stream = order_chat(order_id)
        messages = await self.store.messages(stream)
        conversation = next((c for c in await self.store.conversations() if c.stream == stream), None)
        if order_id != self.current_order:
            return
        panel.stream = stream
        panel.title = f"Customer of order {order_id}"
        peer_read = conversation.peer_read_seq if conversation else 0
        if not self.unchanged("chat", (stream, messages, peer_read)):
            panel.show(messages, peer_read)
        self.nav["chat"].badge = conversation.unread if conversation else 0
        theirs = [m.seq for m in messages if not m.mine and m.seq is not None]
        if theirs and self.sm.current == "chat":
            with contextlib.suppress(ValueError):
                await self.engine.mark_read(stream, max(theirs))
