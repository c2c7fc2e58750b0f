"""AsyncAPI 3.0.0 description of the Socket.IO protocol, generated from the Structs.

:func:`build_asyncapi` is pure: it derives the document from
:data:`protocol.events.CLIENT_EVENTS`, :data:`~protocol.events.CLIENT_EVENT_REPLIES`,
:data:`~protocol.events.SERVER_EVENTS`, the Structs in :mod:`protocol.messages` and
:class:`protocol.errors.ErrorCode`, and performs no I/O. ``scripts/gen_asyncapi.py``
writes it to ``docs/asyncapi.yaml``; a test keeps the file equal to this function's output.

The hub is the described application: client events are ``receive`` operations whose
reply is the ack, server events are ``send`` operations. The Kafka side
(:mod:`protocol.records`) is described too: the ingest topics the hub consumes
(``receive``), and the dead-letter and analytics topics it produces to (``send``).
"""

from __future__ import annotations

import inspect
from typing import Any

import msgspec

from protocol import PROTOCOL_VERSION, events, records
from protocol import messages as m
from protocol.errors import ErrorBody, ErrorCode

ASYNCAPI_VERSION = "3.0.0"
SCHEMA_REF = "#/components/schemas/"
SERVER_KEY = "local"
CHANNEL_KEY = "root"
NAMESPACE = "/"
SOCKETIO_PATH = "/socket.io"
MAX_FRAME_BYTES = 64 * 1024
"""Largest Engine.IO frame the hub accepts (contract; the hub enforces it)."""
NAMESPACE_TIMEOUT_SECONDS = 10
"""An Engine.IO session that connects no namespace within this time is closed (contract)."""

KAFKA_SERVER_KEY = "kafka"
KAFKA_BINDING_VERSION = "0.5.0"
UNIONS: dict[str, Any] = {
    "OrderEvent": m.OrderEvent,
    "StockEvent": m.StockEvent,
    "DurableFrame": m.DurableFrame,
}
"""Union aliases that get a component schema of their own, by component name."""

HTTP_ENDPOINTS: tuple[tuple[str, str, str, str, type[msgspec.Struct]], ...] = (
    ("POST", "/api/v1/events", "Ingest an order, delivery or payment event", "OrderEvent", m.EventAccepted),
    (
        "POST",
        "/api/v1/notifications",
        "Append a notification to a user's inbox",
        "NotificationCreate",
        m.NotificationCreated,
    ),
    (
        "POST",
        "/api/v1/stock",
        "Apply a stock change (set or adjust a SKU's level)",
        "StockEvent",
        m.StockOutcome,
    ),
    (
        "POST",
        "/api/v1/boutiques",
        "Record where a boutique is (pickup point, dispatch searches)",
        "BoutiqueLocation",
        m.BoutiqueLocation,
    ),
)
"""(method, path, summary, request body schema name, ``data`` type of the success envelope)."""

_HANDSHAKE_AUTH_SCHEMA: dict[str, Any] = {
    "title": "HandshakeAuth",
    "description": 'The Socket.IO CONNECT packet\'s auth payload for namespace "/".',
    "type": "object",
    "properties": {
        "token": {
            "type": "string",
            "description": "A JWT issued for the caller (algorithm pinned, exp/aud checked). "
            "Its role claim decides what the socket may do.",
        },
    },
    "required": ["token"],
    "additionalProperties": False,
}


def _doc(obj: object) -> str | None:
    """The cleaned docstring of ``obj``, or None when it has none."""
    doc = None if obj is None else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return None
    return inspect.cleandoc(doc)


def _summary(obj: object) -> str | None:
    doc = _doc(obj)
    return None if doc is None else doc.split("\n\n", 1)[0].replace("\n", " ")


def _clean(node: Any) -> Any:
    """Return ``node`` with every ``description`` dedented and discriminators made AsyncAPI-valid.

    Python 3.13 strips docstring indentation and 3.11 does not; cleaning makes the
    document identical on both.
    """
    if isinstance(node, dict):
        out = {k: _clean(v) for k, v in node.items()}
        if isinstance(out.get("description"), str):
            out["description"] = inspect.cleandoc(out["description"])
        if isinstance(out.get("discriminator"), dict):
            # AsyncAPI's discriminator is a bare property name whose values are schema
            # names; ours are tags, so keep msgspec's OpenAPI-style object as an extension.
            out["x-discriminator"] = out.pop("discriminator")
        return out
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA_REF + name}


def _schemas() -> dict[str, Any]:
    """JSON Schemas of every type on the wire, keyed by component name, sorted."""
    structs: list[Any] = [
        *events.CLIENT_EVENTS.values(),
        *(t for t in events.CLIENT_EVENT_REPLIES.values() if t is not None),
        *events.SERVER_EVENTS.values(),
        m.AckOk,
        m.AckError,
        ErrorBody,
        m.NotificationCreate,
        *(reply for *_, reply in HTTP_ENDPOINTS),
        records.AnalyticsRecord,
    ]
    kinds = [*structs, *UNIONS.values()]
    top, components = msgspec.json.schema_components(kinds, ref_template=SCHEMA_REF + "{name}")
    for name, schema in zip(UNIONS, top[len(structs) :], strict=True):
        components[name] = {"title": name, **schema}
    components["HandshakeAuth"] = _HANDSHAKE_AUTH_SCHEMA
    analytics = components["AnalyticsRecord"]
    analytics["properties"]["event"]["enum"] = sorted(records.ANALYTICS_EVENTS)
    analytics["properties"]["data"]["oneOf"] = [
        _ref(events.SERVER_EVENTS[e].__name__) for e in sorted(records.ANALYTICS_EVENTS)
    ]
    components["DeadLetterHeaders"] = {
        "title": "DeadLetterHeaders",
        "description": "Kafka headers of a dead-lettered record; every value is UTF-8 text.",
        "type": "object",
        "properties": {name: {"type": "string", "description": d} for name, d in records.DLQ_HEADERS.items()},
        "required": list(records.DLQ_HEADERS),
    }
    return {name: _clean(components[name]) for name in sorted(components)}


def _ack_schema(event: str, reply: type[msgspec.Struct] | None) -> dict[str, Any]:
    data = {"type": "null"} if reply is None else _ref(reply.__name__)
    return {
        "title": f"{event} ack",
        "oneOf": [
            {
                "title": f"{event} ok",
                "type": "object",
                "properties": {"ok": {"enum": [True]}, "data": data},
                "required": ["ok", "data"],
            },
            _ref("AckError"),
        ],
    }


def _message(
    name: str, title: str, payload: dict[str, Any], doc_of: object, direction: str
) -> dict[str, Any]:
    msg: dict[str, Any] = {"name": name, "title": title}
    summary = _summary(doc_of)
    if summary is not None:
        msg["summary"] = summary
    msg["contentType"] = "application/json"
    msg["payload"] = payload
    msg["x-direction"] = direction
    return msg


def _messages_and_operations() -> tuple[dict[str, Any], dict[str, Any]]:
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def channel() -> dict[str, str]:
        return {"$ref": f"#/channels/{CHANNEL_KEY}"}

    def chan_msg(key: str) -> dict[str, str]:
        return {"$ref": f"#/channels/{CHANNEL_KEY}/messages/{key}"}

    for event, request in events.CLIENT_EVENTS.items():
        reply = events.CLIENT_EVENT_REPLIES[event]
        req_key, ack_key = f"c2s.{event}", f"c2s.{event}.ack"
        messages[req_key] = _message(
            event, f"{event} (client to server)", _ref(request.__name__), request, "client-to-server"
        )
        messages[ack_key] = _message(
            event, f"{event} ack", _ack_schema(event, reply), reply, "server-to-client (ack)"
        )
        op: dict[str, Any] = {
            "action": "receive",
            "channel": channel(),
            "title": f"Client emits {event}",
        }
        summary = _summary(request)
        if summary is not None:
            op["summary"] = summary
        op["messages"] = [chan_msg(req_key)]
        op["reply"] = {"channel": channel(), "messages": [chan_msg(ack_key)]}
        operations[f"receive.{event}"] = op

    for event, frame in events.SERVER_EVENTS.items():
        key = f"s2c.{event}"
        messages[key] = _message(
            event, f"{event} (server to client)", _ref(frame.__name__), frame, "server-to-client"
        )
        op = {"action": "send", "channel": channel(), "title": f"Hub emits {event}"}
        summary = _summary(frame)
        if summary is not None:
            op["summary"] = summary
        op["messages"] = [chan_msg(key)]
        operations[f"send.{event}"] = op
    return messages, operations


def _error_codes() -> list[dict[str, Any]]:
    return [
        {"code": int(code), "name": code.slug, "temporary": code.temporary}
        for code in sorted(ErrorCode, key=int)
    ]


def _http_endpoints() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for method, path, summary, body, reply in HTTP_ENDPOINTS:
        out.append(
            {
                "method": method,
                "path": path,
                "summary": summary,
                "security": [{"$ref": "#/components/securitySchemes/serviceToken"}],
                "requestBody": {"contentType": "application/json", "schema": _ref(body)},
                "responses": {
                    "200": {
                        "description": "Applied, or a retry of an already applied request (duplicate=true).",
                        "contentType": "application/json",
                        "schema": {
                            "type": "object",
                            "properties": {"ok": {"enum": [True]}, "data": _ref(reply.__name__)},
                            "required": ["ok", "data"],
                        },
                    },
                    "error": {
                        "description": "Any failure: the error envelope with a stable code (x-error-codes).",
                        "contentType": "application/json",
                        "schema": _ref("AckError"),
                    },
                },
            }
        )
    return out


def _kafka() -> dict[str, dict[str, Any]]:
    """The Kafka server, channels, operations and messages, keyed by document section."""
    servers = [{"$ref": f"#/servers/{KAFKA_SERVER_KEY}"}]

    def key_binding(description: str) -> dict[str, Any]:
        return {
            "kafka": {
                "key": {"type": "string", "description": description},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        }

    messages: dict[str, Any] = {
        "kafka.orderEvent": {
            "name": "OrderEvent",
            "title": "Order, delivery or payment event record",
            "summary": "One JSON OrderEvent per record, exactly the body of POST /api/v1/events.",
            "contentType": "application/json",
            "payload": _ref("OrderEvent"),
            "bindings": key_binding("The order_id: one order's events then stay in order in one partition."),
            "x-direction": "kafka-to-hub",
        },
        "kafka.stockEvent": {
            "name": "StockEvent",
            "title": "Stock change record",
            "summary": "One JSON StockEvent per record, exactly the body of POST /api/v1/stock.",
            "contentType": "application/json",
            "payload": _ref("StockEvent"),
            "bindings": key_binding(
                "<boutique_id>/<sku>: one SKU's changes then stay in order in one partition."
            ),
            "x-direction": "kafka-to-hub",
        },
        "kafka.deadLetter": {
            "name": "DeadLetter",
            "title": "Dead-lettered record",
            "summary": "A record the hub can never apply: original key and value, the error in the headers.",
            "headers": _ref("DeadLetterHeaders"),
            "payload": {"description": "The original record's value, byte for byte (it may not be JSON)."},
            "bindings": key_binding("The original record's key."),
            "x-direction": "hub-to-kafka",
        },
        "kafka.analytics": {
            "name": "AnalyticsRecord",
            "title": "Analytics record",
            "summary": _summary(records.AnalyticsRecord),
            "contentType": "application/json",
            "payload": _ref("AnalyticsRecord"),
            "bindings": key_binding("The first of the record's rooms."),
            "x-direction": "hub-to-kafka",
        },
    }

    def channel(key: str, address: str, title: str, description: str, **extra: Any) -> dict[str, Any]:
        return {
            "address": address,
            "title": title,
            "description": description,
            "servers": servers,
            **extra,
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }

    channels = {
        "kafkaOrderEvents": channel(
            "kafka.orderEvent",
            "{topic}",
            "Order, delivery and payment event topics",
            "Read by the hub nodes as one consumer group (SOKO_KAFKA_GROUP), at least once; "
            "each event is applied once by event_id. A record that can never be applied goes "
            "to the dead-letter topic; an event naming an unknown order is retried for "
            "SOKO_KAFKA_NOT_FOUND_GRACE seconds first.",
            parameters={
                "topic": {
                    "enum": list(records.ORDER_TOPICS),
                    "default": records.ORDER_TOPICS[0],
                    "description": "One of SOKO_KAFKA_ORDER_TOPICS (the defaults are listed).",
                }
            },
        ),
        "kafkaStockEvents": channel(
            "kafka.stockEvent",
            "{topic}",
            "Stock change topics",
            "Read by the same consumer group, at least once; each change is applied once per "
            "(boutique_id, event_id), and one whose source version is not newer than the last "
            "applied from that source is ignored as stale. Poison records go to the dead-letter topic.",
            parameters={
                "topic": {
                    "enum": list(records.STOCK_TOPICS),
                    "default": records.STOCK_TOPICS[0],
                    "description": "One of SOKO_KAFKA_STOCK_TOPICS (the defaults are listed).",
                }
            },
        ),
        "kafkaDeadLetter": channel(
            "kafka.deadLetter",
            records.DLQ_TOPIC,
            "Dead-letter topic",
            "SOKO_KAFKA_DLQ_TOPIC. Replay a record by producing its key and value to its source topic.",
        ),
        "kafkaAnalytics": channel(
            "kafka.analytics",
            records.ANALYTICS_TOPIC_EXAMPLE,
            "Analytics topic",
            "SOKO_KAFKA_ANALYTICS_TOPIC (off when unset). Best effort: records are dropped, "
            "and counted in soko_kafka_analytics_dropped_total, when Kafka is down or slow.",
        ),
    }

    def operation(
        action: str, channel_key: str, message_key: str, title: str, **extra: Any
    ) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_key}"},
            "title": title,
            **extra,
            "messages": [{"$ref": f"#/channels/{channel_key}/messages/{message_key}"}],
        }

    group_binding = {
        "kafka": {
            "groupId": {"type": "string", "enum": [records.GROUP]},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }
    operations = {
        "kafka.receive.orderEvents": operation(
            "receive",
            "kafkaOrderEvents",
            "kafka.orderEvent",
            "Hub consumes order events",
            bindings=group_binding,
        ),
        "kafka.receive.stockEvents": operation(
            "receive",
            "kafkaStockEvents",
            "kafka.stockEvent",
            "Hub consumes stock changes",
            bindings=group_binding,
        ),
        "kafka.send.deadLetter": operation(
            "send", "kafkaDeadLetter", "kafka.deadLetter", "Hub dead-letters a record"
        ),
        "kafka.send.analytics": operation(
            "send", "kafkaAnalytics", "kafka.analytics", "Hub publishes analytics records"
        ),
    }
    server = {
        KAFKA_SERVER_KEY: {
            "host": "localhost:9092",
            "protocol": "kafka",
            "description": "The platform's Kafka cluster (SOKO_KAFKA_BOOTSTRAP; Kafka is off when unset).",
        }
    }
    return {"servers": server, "channels": channels, "operations": operations, "messages": messages}


def build_asyncapi() -> dict[str, Any]:
    """Return the AsyncAPI 3.0.0 document for the hub's Socket.IO protocol.

    Pure and deterministic: the same protocol package always yields an equal dict,
    made only of dicts, lists, str, int, bool and None (so YAML and JSON round-trip it).
    """
    messages, operations = _messages_and_operations()
    kafka = _kafka()
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Soko Live hub",
            "version": str(PROTOCOL_VERSION),
            "description": (
                "Socket.IO (protocol v5 over Engine.IO v4) API of the Soko Live hub. Every client event "
                'carries one JSON object argument and expects an ack: {"ok": true, "data": ...} or '
                '{"ok": false, "error": ErrorBody}. Durable frames carry (stream, seq, epoch). '
                "Generated from the protocol package by scripts/gen_asyncapi.py; see docs/protocol.md."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            SERVER_KEY: {
                "host": "localhost:8080",
                "protocol": "ws",
                "pathname": SOCKETIO_PATH,
                "description": 'A hub node. Socket.IO clients connect to namespace "/".',
                "security": [{"$ref": "#/components/securitySchemes/handshakeToken"}],
            },
            **kafka["servers"],
        },
        "channels": {
            CHANNEL_KEY: {
                "address": NAMESPACE,
                "title": "Socket.IO namespace /",
                "description": "The single namespace. Every event below is emitted on it.",
                "servers": [{"$ref": f"#/servers/{SERVER_KEY}"}],
                "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
            },
            **kafka["channels"],
        },
        "operations": {**operations, **kafka["operations"]},
        "components": {
            "schemas": _schemas(),
            "messages": {**messages, **kafka["messages"]},
            "securitySchemes": {
                "handshakeToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        "The JWT travels in the Socket.IO CONNECT packet's auth object, "
                        '{"token": "<JWT>"} (schema HandshakeAuth), not in an HTTP header.'
                    ),
                },
                "serviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": (
                        'Authorization: Bearer <JWT> with role "service", for the HTTP endpoints.'
                    ),
                },
            },
        },
        "x-handshake": {
            "path": SOCKETIO_PATH,
            "namespace": NAMESPACE,
            "auth": _ref("HandshakeAuth"),
            "origin": "The Origin header must be on the hub's allow-list, or the handshake is refused.",
            "maxFrameBytes": MAX_FRAME_BYTES,
            "namespaceTimeoutSeconds": NAMESPACE_TIMEOUT_SECONDS,
            "firstEvent": events.WELCOME,
        },
        "x-error-codes": _error_codes(),
        "x-http-endpoints": _http_endpoints(),
    }
