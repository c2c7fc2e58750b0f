"""``device.health`` over a real hub: one staff notification per event id, for the right boutique only.

An edge gateway (a ``device`` token of its boutique) reports a shelf sensor's health; the
boutique's staff get it live as a ``notification`` frame (category ``device``) and find it
in their shared inbox through ``sync``/``catchup``. Repeats, other roles, other boutiques
and malformed reports create nothing.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.support.hub import RunningHub
from tests.support.streamclient import StreamClient

B = "boutique-a"
OTHER = "boutique-b"
INBOX = f"inbox:b:{B}"
OTHER_INBOX = f"inbox:b:{OTHER}"


def report(event_id: str, state: str = "silent", boutique: str = B, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": event_id,
        "boutique_id": boutique,
        "shelf": "a1",
        "sensor": "s1",
        "sku": "mug",
        "state": state,
        "detail": f"detail of {event_id}",
        "ts": 1_700_000_000_000,
    }
    body.update(extra)
    return body


async def client(hub: RunningHub, role: str, sub: str, boutique: str | None = None) -> StreamClient:
    c = StreamClient(hub.url, hub.token(role, sub, boutique=boutique))
    await c.connect(sync=role == "staff")
    return c


def device_frames(c: StreamClient, stream: str) -> list[dict[str, Any]]:
    return [f for event, f in c.live if event == "notification" and f["stream"] == stream]


async def error_of(c: StreamClient, data: Any) -> dict[str, Any]:
    reply = await c.call("device.health", data)
    assert reply["ok"] is False, reply
    error: dict[str, Any] = reply["error"]
    return error


async def inbox_head(c: StreamClient, stream: str) -> int:
    statuses = {s["stream"]: s for s in await c.sync()}
    return int(statuses[stream]["head"])


@pytest.mark.asyncio
async def test_report_reaches_staff_live_and_in_the_inbox_once_per_event_id(hub) -> None:  # type: ignore[no-untyped-def]
    staff = await client(hub, "staff", "clerk-1", B)
    outsider = await client(hub, "staff", "clerk-other", OTHER)
    device = await client(hub, "device", "gw-a", B)
    try:
        first = await device.ok("device.health", report("e1", "silent"))
        assert first == {"notification_id": f"device.{B}.e1", "duplicate": False}
        await staff.wait_for(lambda: len(device_frames(staff, INBOX)) == 1)
        frame = device_frames(staff, INBOX)[0]
        assert frame["kind"] == "notification" and frame["category"] == "device"
        assert frame["id"] == first["notification_id"] and frame["seq"] == 1 and frame["alert"] is True
        assert frame["title"] == "Shelf sensor a1/s1 (mug) stopped reporting"
        assert frame["body"] == "detail of e1"
        assert frame["data"] == {
            "shelf": "a1",
            "sensor": "s1",
            "sku": "mug",
            "state": "silent",
            "device": "gw-a",
            "ts": 1_700_000_000_000,
        }

        # The same event id again, even with other content: nothing new, the same id back.
        again = await device.ok("device.health", report("e1", "ok", detail="changed"))
        assert again == {"notification_id": f"device.{B}.e1", "duplicate": True}
        # A later report is a barrier: had the repeat pushed a frame, it would arrive before this one.
        await device.ok("device.health", report("e2", "invalid"))
        await device.ok("device.health", report("e3", "ok"))
        await staff.wait_for(lambda: len(device_frames(staff, INBOX)) == 3)
        frames = device_frames(staff, INBOX)
        assert [f["id"] for f in frames] == [f"device.{B}.e1", f"device.{B}.e2", f"device.{B}.e3"]
        assert [f["seq"] for f in frames] == [1, 2, 3]
        assert [f["title"] for f in frames[1:]] == [
            "Shelf sensor a1/s1 (mug) reports impossible readings",
            "Shelf sensor a1/s1 (mug) is working again",
        ]
        assert staff.entries[INBOX] == frames

        # A colleague connecting later finds exactly these three through sync + catchup.
        late = await client(hub, "staff", "clerk-2", B)
        try:
            assert [e["id"] for e in late.entries[INBOX]] == [f["id"] for f in frames]
            page = await late.ok("catchup", {"stream": INBOX, "after": 0, "limit": 100})
            assert [(e["kind"], e["category"], e["seq"]) for e in page["entries"]] == [
                ("notification", "device", 1),
                ("notification", "device", 2),
                ("notification", "device", 3),
            ]
            assert not page["has_more"]
        finally:
            await late.disconnect()

        # The other boutique's staff got nothing and may not read this inbox.
        assert not [f for event, f in outsider.live if event == "notification"]
        assert await inbox_head(outsider, OTHER_INBOX) == 0
        assert INBOX not in {s["stream"] for s in await outsider.sync()}
        reply = await outsider.call("catchup", {"stream": INBOX, "after": 0})
        assert reply["ok"] is False and reply["error"]["code"] == 2003

        metrics = await hub_metrics(hub)
        assert 'soko_device_health_total{outcome="notified",state="silent"} 1.0' in metrics
        assert 'soko_device_health_total{outcome="duplicate",state="ok"} 1.0' in metrics
        assert 'soko_device_health_total{outcome="notified",state="invalid"} 1.0' in metrics
    finally:
        for c in (staff, outsider, device):
            await c.disconnect()


async def hub_metrics(hub: RunningHub) -> str:
    async with aiohttp.ClientSession() as http, http.get(hub.url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("role", "sub", "boutique", "reported_for"),
    [
        ("shopper", "sh1", None, B),
        ("staff", "clerk-1", B, B),
        ("driver", "d1", None, B),
        ("dispatcher", "disp1", None, B),
        ("service", "svc1", None, B),
        ("device", "gw-b", OTHER, B),
        ("device", "gw-a", B, OTHER),
    ],
    ids=["shopper", "staff", "driver", "dispatcher", "service", "device-of-b-for-a", "device-of-a-for-b"],
)
async def test_only_a_device_of_the_boutique_may_report(  # type: ignore[no-untyped-def]
    hub, role: str, sub: str, boutique: str | None, reported_for: str
) -> None:
    caller = await client(hub, role, sub, boutique)
    try:
        error = await error_of(caller, report("e1", boutique=reported_for))
        assert error["code"] == 2003 and error["name"] == "forbidden" and error["temporary"] is False
    finally:
        await caller.disconnect()
    watchers = [await client(hub, "staff", "clerk-a", B), await client(hub, "staff", "clerk-b", OTHER)]
    try:
        assert await inbox_head(watchers[0], INBOX) == 0
        assert await inbox_head(watchers[1], OTHER_INBOX) == 0
    finally:
        for w in watchers:
            await w.disconnect()


BAD_REPORTS = [
    ("unknown state", report("b1", "broken"), 1000),
    ("null state", report("b2", None), 1000),
    ("detail too long", report("b3", detail="x" * 201), 1000),
    ("detail not a string", report("b4", detail=["x"]), 1000),
    ("dotted event id", report("a.b"), 1003),
    ("operator shelf", report("b5", shelf="$gt"), 1003),
    ("long sku", report("b6", sku="s" * 65), 1003),
    ("operator boutique", report("b7", boutique={"$ne": None}), 1000),
    ("negative ts", report("b8", ts=-1), 1000),
    ("ts as string", report("b9", ts="1700000000000"), 1000),
    ("unknown field", report("b10", admin=True), 1000),
    ("missing ts", {k: v for k, v in report("b11").items() if k != "ts"}, 1000),
    ("not an object", ["b12"], 1000),
]


@pytest.mark.asyncio
async def test_malformed_reports_get_a_stable_code_and_the_connection_keeps_working(hub) -> None:  # type: ignore[no-untyped-def]
    device = await client(hub, "device", "gw-a", B)
    staff = await client(hub, "staff", "clerk-1", B)
    try:
        wrong: list[str] = []
        for label, body, code in BAD_REPORTS:
            error = await error_of(device, body)
            if error["code"] != code or error["temporary"] is not False:
                wrong.append(f"{label}: expected {code}, got {error}")
        assert not wrong, "\n".join(wrong)

        # A detail of exactly the limit is fine, and it is the only notification there is.
        accepted = await device.ok("device.health", report("good", detail="y" * 200))
        assert accepted == {"notification_id": f"device.{B}.good", "duplicate": False}
        await staff.wait_for(lambda: len(device_frames(staff, INBOX)) == 1)
        assert device_frames(staff, INBOX)[0]["body"] == "y" * 200
        assert await inbox_head(staff, INBOX) == 1
    finally:
        await device.disconnect()
        await staff.disconnect()
