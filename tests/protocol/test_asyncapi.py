"""docs/asyncapi.yaml is generated from the protocol package and must stay in step with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from protocol import PROTOCOL_VERSION, events, records
from protocol.asyncapi import build_asyncapi
from protocol.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[2]
YAML_PATH = ROOT / "docs" / "asyncapi.yaml"
REGENERATE = "docs/asyncapi.yaml is stale: run `python scripts/gen_asyncapi.py` and commit the result"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_asyncapi()


def test_committed_yaml_matches_generator(doc: dict[str, Any]) -> None:
    assert YAML_PATH.exists(), REGENERATE
    committed = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))
    assert committed == doc, REGENERATE


def test_build_is_deterministic_and_plain_json(doc: dict[str, Any]) -> None:
    again = build_asyncapi()
    assert again == doc
    assert json.loads(json.dumps(doc)) == doc
    # No shared mutable nodes: mutating one result must not leak into the next.
    again["components"]["schemas"].clear()
    assert build_asyncapi() == doc


def test_header(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "Soko Live hub"
    assert doc["info"]["version"] == str(PROTOCOL_VERSION)
    server = doc["servers"]["local"]
    assert (server["protocol"], server["host"], server["pathname"]) == ("ws", "localhost:8080", "/socket.io")
    assert doc["channels"]["root"]["address"] == "/"
    assert [
        c["address"] for c in doc["channels"].values() if c["servers"] == [{"$ref": "#/servers/local"}]
    ] == ["/"]


def _messages_named(doc: dict[str, Any], name: str, direction: str) -> list[dict[str, Any]]:
    return [
        msg
        for msg in doc["components"]["messages"].values()
        if msg["name"] == name and msg["x-direction"] == direction
    ]


@pytest.mark.parametrize("event", sorted(events.CLIENT_EVENTS))
def test_every_client_event_has_a_receive_operation_with_ack(doc: dict[str, Any], event: str) -> None:
    [request] = _messages_named(doc, event, "client-to-server")
    assert request["payload"] == {"$ref": f"#/components/schemas/{events.CLIENT_EVENTS[event].__name__}"}
    [ack] = _messages_named(doc, event, "server-to-client (ack)")
    ok_branch, error_branch = ack["payload"]["oneOf"]
    reply = events.CLIENT_EVENT_REPLIES[event]
    expected = {"type": "null"} if reply is None else {"$ref": f"#/components/schemas/{reply.__name__}"}
    assert ok_branch["properties"]["data"] == expected
    assert error_branch == {"$ref": "#/components/schemas/AckError"}
    op = doc["operations"][f"receive.{event}"]
    assert op["action"] == "receive"
    assert op["messages"] == [{"$ref": f"#/channels/root/messages/c2s.{event}"}]
    assert op["reply"]["messages"] == [{"$ref": f"#/channels/root/messages/c2s.{event}.ack"}]


@pytest.mark.parametrize("event", sorted(events.SERVER_EVENTS))
def test_every_server_event_has_a_send_operation(doc: dict[str, Any], event: str) -> None:
    [frame] = _messages_named(doc, event, "server-to-client")
    assert frame["payload"] == {"$ref": f"#/components/schemas/{events.SERVER_EVENTS[event].__name__}"}
    op = doc["operations"][f"send.{event}"]
    assert op["action"] == "send"
    assert op["messages"] == [{"$ref": f"#/channels/root/messages/s2c.{event}"}]


def test_client_events_all_have_a_reply_entry() -> None:
    assert set(events.CLIENT_EVENT_REPLIES) == set(events.CLIENT_EVENTS)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_ref_resolves_inside_the_document(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        assert "$defs" not in ref, ref
        node: Any = doc
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
            node = node[part]


def test_error_codes_table(doc: dict[str, Any]) -> None:
    assert doc["x-error-codes"] == [
        {"code": int(c), "name": c.slug, "temporary": c.temporary} for c in sorted(ErrorCode, key=int)
    ]


def test_http_endpoints(doc: dict[str, Any]) -> None:
    endpoints = {(e["method"], e["path"]): e for e in doc["x-http-endpoints"]}
    assert set(endpoints) == {
        ("POST", "/api/v1/events"),
        ("POST", "/api/v1/notifications"),
        ("POST", "/api/v1/stock"),
        ("POST", "/api/v1/boutiques"),
    }
    schemas = doc["components"]["schemas"]
    events_body = endpoints["POST", "/api/v1/events"]["requestBody"]["schema"]
    assert events_body == {"$ref": "#/components/schemas/OrderEvent"}
    tags = set(schemas["OrderEvent"]["x-discriminator"]["mapping"])
    assert tags == {"order.created", "order.status_updated", "delivery.assigned", "payment.completed"}
    notif_body = endpoints["POST", "/api/v1/notifications"]["requestBody"]["schema"]
    assert notif_body == {"$ref": "#/components/schemas/NotificationCreate"}
    stock_body = endpoints["POST", "/api/v1/stock"]["requestBody"]["schema"]
    assert stock_body == {"$ref": "#/components/schemas/StockEvent"}
    assert set(schemas["StockEvent"]["x-discriminator"]["mapping"]) == {"stock.set", "stock.adjust"}


def test_handshake(doc: dict[str, Any]) -> None:
    auth = doc["components"]["schemas"]["HandshakeAuth"]
    assert auth["required"] == ["token"]
    assert doc["x-handshake"]["auth"] == {"$ref": "#/components/schemas/HandshakeAuth"}
    assert doc["x-handshake"]["maxFrameBytes"] == 64 * 1024
    assert "handshakeToken" in doc["components"]["securitySchemes"]


def test_protocol_md_names_every_event_and_error() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    for name in [*events.CLIENT_EVENTS, *events.SERVER_EVENTS]:
        assert f"| `{name}` |" in text, f"docs/protocol.md has no table row for event {name!r}"
    for code in ErrorCode:
        assert f"| {int(code)} | `{code.slug}` | {'yes' if code.temporary else 'no'} |" in text, code


def test_kafka_channels(doc: dict[str, Any]) -> None:
    assert doc["servers"]["kafka"]["protocol"] == "kafka"
    channels = {key: c for key, c in doc["channels"].items() if c["servers"] == [{"$ref": "#/servers/kafka"}]}
    assert {key: c["address"] for key, c in channels.items()} == {
        "kafkaOrderEvents": "{topic}",
        "kafkaStockEvents": "{topic}",
        "kafkaDeadLetter": records.DLQ_TOPIC,
        "kafkaAnalytics": records.ANALYTICS_TOPIC_EXAMPLE,
    }
    assert channels["kafkaOrderEvents"]["parameters"]["topic"]["enum"] == list(records.ORDER_TOPICS)
    assert channels["kafkaStockEvents"]["parameters"]["topic"]["enum"] == list(records.STOCK_TOPICS)
    messages = doc["components"]["messages"]
    assert messages["kafka.orderEvent"]["payload"] == {"$ref": "#/components/schemas/OrderEvent"}
    assert messages["kafka.stockEvent"]["payload"] == {"$ref": "#/components/schemas/StockEvent"}
    assert messages["kafka.analytics"]["payload"] == {"$ref": "#/components/schemas/AnalyticsRecord"}
    assert messages["kafka.deadLetter"]["headers"] == {"$ref": "#/components/schemas/DeadLetterHeaders"}
    actions = {key: op["action"] for key, op in doc["operations"].items() if key.startswith("kafka.")}
    assert actions == {
        "kafka.receive.orderEvents": "receive",
        "kafka.receive.stockEvents": "receive",
        "kafka.send.deadLetter": "send",
        "kafka.send.analytics": "send",
    }
    schemas = doc["components"]["schemas"]
    assert schemas["DeadLetterHeaders"]["required"] == list(records.DLQ_HEADERS)
    analytics = schemas["AnalyticsRecord"]["properties"]
    assert analytics["event"]["enum"] == sorted(records.ANALYTICS_EVENTS)
    assert analytics["data"]["oneOf"] == [
        {"$ref": f"#/components/schemas/{events.SERVER_EVENTS[e].__name__}"}
        for e in sorted(records.ANALYTICS_EVENTS)
    ]
