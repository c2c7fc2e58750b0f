"""The whole edge path with real servers: simulated shelves -> Mosquitto -> gateway -> hub.

Each test checks the hub against the simulator's truth (what is really on the shelves),
and checks "nothing lost, nothing applied twice" by accounting: every stock event the
gateway created is exactly one entry of the hub's ``inv:`` stream, with no event id twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio

from edge.outbox import OutboxStatus
from edge.simulate import StoreSimulator
from tests.support.edge import (
    BOUTIQUE,
    GatewayProcess,
    GatewayTask,
    eventually,
    hub_inventory,
    load,
    outbox_status,
    write_config,
)
from tests.support.hub import free_port

READING_PERIOD_S = 0.05


@contextlib.asynccontextmanager
async def reporting(sim: StoreSimulator) -> AsyncIterator[None]:
    """The sensors report their shelves every READING_PERIOD_S, as real sensors do, until the block ends."""

    async def report() -> None:
        while True:
            await sim.publish_all()
            await asyncio.sleep(READING_PERIOD_S)

    task = asyncio.create_task(report())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def assert_each_event_once(entries: list[dict[str, Any]], status: OutboxStatus) -> None:
    """Every event the gateway created reached the hub's stream exactly once."""
    ids = [entry["event_id"] for entry in entries]
    assert len(ids) == len(set(ids)), "an event was applied twice"
    assert status.depth == 0
    assert status.totals.coalesced == 0 and status.totals.rejected == 0
    assert len(ids) == status.totals.created, (len(ids), status.totals)


def shuffle_shelves(sim: StoreSimulator, round_no: int) -> None:
    """Shoppers take items from some shelves; an empty shelf is restocked."""
    for index, (key, shelf) in enumerate(sim.shelves.items()):
        if (round_no + index) % 3 == 0:
            continue
        if shelf.count == 0:
            sim.restock(key)
        else:
            sim.take(key, 1 + (round_no + index) % 2)


@pytest.mark.asyncio
async def test_hub_outage_loses_nothing_and_applies_nothing_twice(tmp_path, mosquitto, hub_factory) -> None:
    port = free_port()
    hub = await hub_factory(port=port)
    staff = hub.token("staff", "ann", BOUTIQUE)
    config = write_config(tmp_path, hub_url=hub.url, mqtt_port=mosquitto.port)
    gateway = GatewayTask(await load(config), hub.token("device", "gw1", BOUTIQUE))
    gateway.start()
    try:
        async with StoreSimulator(gateway.cfg, port=mosquitto.port, seed=11) as sim, reporting(sim):

            async def hub_matches_shelves() -> bool:
                return (await hub_inventory(hub.url, staff)).levels == sim.truth()

            await eventually(hub_matches_shelves, what="first levels on the hub")

            await hub.stop()
            for round_no in range(8):
                shuffle_shelves(sim, round_no)
                await asyncio.sleep(0.5)
            held = await outbox_status(config)
            assert held.depth > 0, "the gateway should hold the changes made while the hub was down"

            hub = await hub_factory(port=port)

            async def drained_and_equal() -> bool:
                return (await outbox_status(config)).depth == 0 and await hub_matches_shelves()

            await eventually(drained_and_equal, what="hub equal to the shelves after the outage")
            inventory = await hub_inventory(hub.url, staff)
            assert inventory.levels == sim.truth()
            assert_each_event_once(inventory.entries, (await outbox_status(config)))
            assert held.totals.created > 4  # the outage really produced changes, not just the first levels
    finally:
        await gateway.stop()


@pytest.mark.asyncio
async def test_gateway_killed_mid_drain_resumes_without_loss_or_repeat(
    tmp_path, mosquitto, hub_factory
) -> None:
    # A slow hub (4 events/s per device) makes the drain of the backlog take seconds,
    # so the kill lands in the middle of it.
    port = free_port()
    slow = {"rate_per_second": 4.0, "rate_burst": 2}
    hub = await hub_factory(port=port, **slow)
    staff = hub.token("staff", "ann", BOUTIQUE)
    config = write_config(tmp_path, hub_url=hub.url, mqtt_port=mosquitto.port, batch=1)
    gateway = GatewayProcess(config, hub.token("device", "gw1", BOUTIQUE))
    gateway.start()
    try:
        async with StoreSimulator(await load(config), port=mosquitto.port, seed=5) as sim, reporting(sim):

            async def hub_matches_shelves() -> bool:
                return (await hub_inventory(hub.url, staff)).levels == sim.truth()

            await eventually(hub_matches_shelves, what="first levels on the hub")
            await hub.stop()
            for round_no in range(6):
                shuffle_shelves(sim, round_no)
                await asyncio.sleep(0.5)
            backlog = (await outbox_status(config)).depth
            assert backlog >= 8, gateway.output()
            hub = await hub_factory(port=port, **slow)

            async def partly_drained() -> bool:
                return (await outbox_status(config)).depth <= backlog - 2

            await eventually(partly_drained, what="the drain to start")
            await gateway.kill()
            after_kill = await outbox_status(config)
            assert 0 < after_kill.depth < backlog, "the kill should land mid-drain"

            # `soko edge status` reads the file of the dead gateway.
            status = await asyncio.to_thread(run_soko, "edge", "status", "--config", str(config))
            assert status.returncode == 0, status.stderr
            assert f"queue: {after_kill.depth} pending" in status.stdout
            assert "a1/s1" in status.stdout and "mug" in status.stdout
            as_json = json.loads(
                (
                    await asyncio.to_thread(run_soko, "edge", "status", "--config", str(config), "--json")
                ).stdout
            )
            assert as_json["depth"] == after_kill.depth and as_json["boutique"] == BOUTIQUE

            # Shelves keep changing while the gateway is dead: the broker keeps the readings
            # for its persistent session.
            shuffle_shelves(sim, 7)
            await asyncio.sleep(0.3)
            gateway.start()

            async def drained_and_equal() -> bool:
                return (await outbox_status(config)).depth == 0 and await hub_matches_shelves()

            await eventually(drained_and_equal, what="hub equal to the shelves after the restart")
            inventory = await hub_inventory(hub.url, staff)
            assert_each_event_once(inventory.entries, (await outbox_status(config)))
            await gateway.stop()  # SIGTERM: a clean exit
            assert gateway.proc is not None and gateway.proc.returncode == 0, gateway.output()
    finally:
        await gateway.stop()
        print(gateway.output()[-3000:])


def run_soko(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.soko", *args], capture_output=True, text=True, timeout=60, check=False
    )


async def staff_inbox(url: str, staff_token: str) -> list[dict[str, Any]]:
    """Every entry of the boutique's staff inbox, oldest first."""
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(url, auth={"token": staff_token}, transports=["websocket"], wait_timeout=10)
    try:
        reply = await sio.call(
            "catchup", {"stream": f"inbox:b:{BOUTIQUE}", "epoch": None, "after": 0, "limit": 500}, timeout=30
        )
        assert reply["ok"], reply
        return list(reply["data"]["entries"])
    finally:
        await sio.disconnect()


@pytest.mark.asyncio
async def test_noise_and_hands_on_the_shelf_raise_no_alert(tmp_path, mosquitto, hub) -> None:
    staff = hub.token("staff", "ann", BOUTIQUE)
    # A settle time far longer than any hand rest below, so a slow machine cannot turn one into a change.
    config = write_config(tmp_path, hub_url=hub.url, mqtt_port=mosquitto.port, settle_s=1.0)
    gateway = GatewayTask(await load(config), hub.token("device", "gw1", BOUTIQUE))
    gateway.start()
    try:
        async with StoreSimulator(gateway.cfg, port=mosquitto.port, seed=3) as sim, reporting(sim):

            async def first_levels() -> bool:
                return (await hub_inventory(hub.url, staff)).levels == sim.truth()

            await eventually(first_levels, what="first levels on the hub")
            # Alert when the mugs fall to 10 of 12 or the bowls to 6 of 8: a hand lifting
            # a few units for a moment would cross both thresholds if it became a change.
            sio = socketio.AsyncClient(reconnection=False)
            await sio.connect(hub.url, auth={"token": staff}, transports=["websocket"], wait_timeout=10)
            for sku, low in (("mug", 10), ("bowl", 6)):
                reply = await sio.call(
                    "stock.threshold", {"boutique_id": BOUTIQUE, "sku": sku, "low": low}, timeout=30
                )
                assert reply["ok"], reply
            await sio.disconnect()
            for _ in range(4):
                await asyncio.sleep(0.6)  # noise only
                sim.hand("a1/s1", -3 * 350.0)  # mugs lifted and put back
                sim.hand("a1/s2", 800.0)  # a hand leaning on the bowls
                await asyncio.sleep(0.2)
                sim.hand("a1/s1", None)
                sim.hand("a1/s2", None)
            await asyncio.sleep(1.5)  # longer than settle_s: anything pending would have settled

            inventory = await hub_inventory(hub.url, staff)
            assert inventory.levels == sim.truth()
            assert [entry["sku"] for entry in inventory.entries] == ["mug", "bowl", "soap", "candle"]
            assert await staff_inbox(hub.url, staff) == []
            assert (await outbox_status(config)).totals.created == 4
    finally:
        await gateway.stop()


@pytest.mark.asyncio
async def test_broken_sensors_alert_staff_and_never_change_stock(tmp_path, mosquitto, hub) -> None:
    staff = hub.token("staff", "ann", BOUTIQUE)
    config = write_config(tmp_path, hub_url=hub.url, mqtt_port=mosquitto.port, silent_after_s=3.0)
    gateway = GatewayTask(await load(config), hub.token("device", "gw1", BOUTIQUE))
    gateway.start()
    try:
        async with StoreSimulator(gateway.cfg, port=mosquitto.port, seed=9) as sim, reporting(sim):

            async def first_levels() -> bool:
                return (await hub_inventory(hub.url, staff)).levels == sim.truth()

            await eventually(first_levels, what="first levels on the hub")
            before = await hub_inventory(hub.url, staff)
            sim.fail("a1/s2", "nan")
            sim.fail("b2/c1", "overload")
            sim.fail("b2/c2", "silent")

            async def three_alerts() -> bool:
                return len(await staff_inbox(hub.url, staff)) >= 3

            await eventually(three_alerts, what="three sensor alerts")
            await asyncio.sleep(1.0)  # more garbage: no second alert, no stock change
            alerts = await staff_inbox(hub.url, staff)
            states = {(a["data"]["shelf"] + "/" + a["data"]["sensor"], a["data"]["state"]) for a in alerts}
            assert states == {("a1/s2", "invalid"), ("b2/c1", "invalid"), ("b2/c2", "silent")}
            assert len(alerts) == 3 and all(a["category"] == "device" for a in alerts)
            assert (await hub_inventory(hub.url, staff)).entries == before.entries

            for key in ("a1/s2", "b2/c1", "b2/c2"):
                sim.fail(key, None)

            async def recovered() -> bool:
                return len(await staff_inbox(hub.url, staff)) >= 6

            await eventually(recovered, what="three recoveries")
            recoveries = (await staff_inbox(hub.url, staff))[3:]
            assert sorted(a["data"]["state"] for a in recoveries) == ["ok", "ok", "ok"]
            assert (await hub_inventory(hub.url, staff)).entries == before.entries
            status = await outbox_status(config)
            assert {s.key: s.health for s in status.sensors} == dict.fromkeys(sim.shelves, "ok")
    finally:
        await gateway.stop()


def test_a_bad_config_file_names_the_field(tmp_path) -> None:
    config = write_config(tmp_path, hub_url="http://127.0.0.1:1", mqtt_port=1)
    text = config.read_text(encoding="utf-8").replace("unit_weight = 520.0\n", "")
    config.write_text(text, encoding="utf-8")
    for command in ("check", "run", "status"):
        result = run_soko("edge", command, "--config", str(config))
        assert result.returncode == 2, (command, result)
        assert "edge.toml: sensors[1].unit_weight: required for a weight sensor" in result.stderr, (
            result.stderr
        )

    config.write_text(text.replace('kind = "count"', 'kind = "scale"', 1), encoding="utf-8")
    result = run_soko("edge", "check", "--config", str(config))
    assert result.returncode == 2
    assert 'edge.toml: sensors[2].kind: must be "count" or "weight", got "scale"' in result.stderr

    good = write_config(tmp_path, hub_url="http://127.0.0.1:1", mqtt_port=1)
    result = run_soko("edge", "check", "--config", str(good))
    assert result.returncode == 0 and "4 sensors for boutique b1" in result.stdout, result


@pytest.mark.asyncio
async def test_a_full_outbox_coalesces_to_the_latest_level_per_sku(tmp_path, mosquitto, hub_factory) -> None:
    port = free_port()
    hub = await hub_factory(port=port)
    staff = hub.token("staff", "ann", BOUTIQUE)
    # The smallest outbox the config allows for 4 sensors: 8 events.
    config = write_config(tmp_path, hub_url=hub.url, mqtt_port=mosquitto.port, max_events=8)
    gateway = GatewayTask(await load(config), hub.token("device", "gw1", BOUTIQUE))
    gateway.start()
    try:
        async with StoreSimulator(gateway.cfg, port=mosquitto.port, seed=21) as sim, reporting(sim):

            async def hub_matches_shelves() -> bool:
                return (await hub_inventory(hub.url, staff)).levels == sim.truth()

            await eventually(hub_matches_shelves, what="first levels on the hub")
            await hub.stop()
            for round_no in range(10):
                shuffle_shelves(sim, round_no)
                await asyncio.sleep(0.5)
            held = await outbox_status(config)
            assert held.depth <= 8 and held.totals.coalesced > 0, held

            hub = await hub_factory(port=port)

            async def drained_and_equal() -> bool:
                return (await outbox_status(config)).depth == 0 and await hub_matches_shelves()

            await eventually(drained_and_equal, what="hub equal to the shelves after coalescing")
            entries = (await hub_inventory(hub.url, staff)).entries
            status = await outbox_status(config)
            ids = [entry["event_id"] for entry in entries]
            assert len(ids) == len(set(ids))
            assert len(ids) == status.totals.created - status.totals.coalesced
    finally:
        await gateway.stop()


@pytest.mark.asyncio
async def test_soko_edge_simulate_and_example(tmp_path, mosquitto) -> None:
    example = await asyncio.to_thread(run_soko, "edge", "example")
    assert example.returncode == 0 and "[[sensors]]" in example.stdout
    config = tmp_path / "store.toml"
    config.write_text(example.stdout.replace("port = 1883", f"port = {mosquitto.port}"), encoding="utf-8")
    truth = tmp_path / "truth.json"
    args = ["--duration", "2", "--rate", "5", "--seed", "4", "--failing", "B2/counter", "--truth", str(truth)]
    result = await asyncio.to_thread(run_soko, "edge", "simulate", "--config", str(config), *args)
    assert result.returncode == 0, result.stderr
    assert "t=1s published=" in result.stderr
    final = json.loads(truth.read_text(encoding="utf-8"))
    assert json.loads(result.stdout) == final
    assert set(final) == {"tea-500g", "coffee-250g", "candle-soy", "honey-250g"}

    result = await asyncio.to_thread(
        run_soko, "edge", "simulate", "--config", str(config), "--failing", "Z9/none", "--duration", "1"
    )
    assert result.returncode == 2 and "--failing Z9/none: no such sensor" in result.stderr


@pytest.mark.asyncio
async def test_a_change_still_settling_survives_a_gateway_restart(tmp_path, mosquitto, hub) -> None:
    """A sensor that reports only when something changes: its one reading of the new count
    reaches the gateway, which stops before settle_s has passed. The restarted gateway must
    still send the new count, with no further reading."""
    staff = hub.token("staff", "ann", BOUTIQUE)
    config = write_config(tmp_path, hub_url=hub.url, mqtt_port=mosquitto.port, settle_s=1.0)
    cfg = await load(config)
    token = hub.token("device", "gw1", BOUTIQUE)
    gateway = GatewayTask(cfg, token)
    gateway.start()
    try:
        async with StoreSimulator(cfg, port=mosquitto.port, seed=2) as sim:
            async with reporting(sim):

                async def first_levels() -> bool:
                    return (await hub_inventory(hub.url, staff)).levels == sim.truth()

                await eventually(first_levels, what="first levels on the hub")
            sim.take("b2/c1", 4)
            await sim.publish_all()  # once: the sensors go quiet after this report
            await asyncio.sleep(0.4)  # handled, but less than settle_s
            await gateway.stop()
            assert (await hub_inventory(hub.url, staff)).levels["soap"] == 30

            gateway = GatewayTask(cfg, token)
            gateway.start()

            async def soap_sent() -> bool:
                return (await hub_inventory(hub.url, staff)).levels["soap"] == 26

            await eventually(soap_sent, what="the settling change to reach the hub after the restart")
            assert (await hub_inventory(hub.url, staff)).levels == sim.truth()
    finally:
        await gateway.stop()
