"""Real decodes through protocol.codec, and the stream-id helpers in protocol.ids."""

from __future__ import annotations

from typing import Any, get_args

import msgspec
import pytest

from protocol import ids
from protocol import messages as m
from protocol.codec import decode_json, decode_value, encode_json, to_wire
from protocol.errors import ErrorCode, SokoError


def _code(value: Any, kind: Any) -> ErrorCode:
    with pytest.raises(SokoError) as info:
        decode_value(value, kind)
    return info.value.code


# ---------------------------------------------------------------- decoding


def test_good_chat_send_decodes() -> None:
    msg = decode_value(
        {"stream": "chat:b:boutique_1:shopper-9", "client_id": "01JD3M5Z6Q8W9X0Y1Z2A3B4C5D", "text": "hi"},
        m.ChatSend,
    )
    assert msg == m.ChatSend(
        stream="chat:b:boutique_1:shopper-9", client_id="01JD3M5Z6Q8W9X0Y1Z2A3B4C5D", text="hi"
    )


def test_sync_defaults_and_cursors() -> None:
    assert decode_value({}, m.SyncRequest).cursors == []
    req = decode_value({"cursors": [{"stream": "inbox:u:u1", "epoch": "e1", "seq": 7}]}, m.SyncRequest)
    assert req.cursors == [m.Cursor(stream="inbox:u:u1", epoch="e1", seq=7)]


def test_unknown_field_is_bad_request() -> None:
    assert _code({"stream": "chat:o:o1", "extra": 1}, m.TypingRequest) == ErrorCode.BAD_REQUEST


def test_wrong_type_is_bad_request() -> None:
    assert _code({"stream": "chat:o:o1", "limit": "5"}, m.CatchupRequest) == ErrorCode.BAD_REQUEST
    assert _code({"stream": "chat:o:o1", "limit": True}, m.CatchupRequest) == ErrorCode.BAD_REQUEST
    assert _code(["chat:o:o1"], m.TypingRequest) == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("bad", ["", "a" * 65, "a b", "a/b", "a:b", "a.b", "é", "abc\n"])
def test_bad_id_pattern_is_invalid_id(bad: str) -> None:
    assert _code({"order_id": bad}, m.OrderWatchRequest) == ErrorCode.INVALID_ID


def test_bad_id_in_a_list_is_invalid_id() -> None:
    assert _code({"boutiques": ["b1", "b 2"]}, m.PresenceRequest) == ErrorCode.INVALID_ID


@pytest.mark.parametrize(
    "bad",
    [
        "chat:x:a", "chat:o:", "chat:o:a:b", "inbox:z:u1", "chat:b:a", "chat:o:$where",
        "inbox:u:u1\n",
    ],
)  # fmt: skip
def test_bad_stream_is_invalid_id(bad: str) -> None:
    assert _code({"stream": bad}, m.TypingRequest) == ErrorCode.INVALID_ID


def test_mongo_operator_cannot_ride_in_an_id() -> None:
    # As a string it fails the pattern; as an object it fails the type.
    assert _code({"order_id": "$where"}, m.OrderWatchRequest) == ErrorCode.INVALID_ID
    assert _code({"stream": "chat:o:$where", "seq": 1}, m.ReadRequest) == ErrorCode.INVALID_ID
    assert _code({"order_id": {"$where": "sleep(1000)"}}, m.OrderWatchRequest) == ErrorCode.BAD_REQUEST
    assert _code({"order_id": {"$ne": None}}, m.OrderWatchRequest) == ErrorCode.BAD_REQUEST


def test_page_limit_bounds() -> None:
    ok = decode_value({"stream": "chat:o:o1", "limit": m.MAX_PAGE}, m.CatchupRequest)
    assert ok.limit == m.MAX_PAGE
    assert decode_value({"stream": "chat:o:o1"}, m.CatchupRequest).limit == m.DEFAULT_PAGE
    assert _code({"stream": "chat:o:o1", "limit": m.MAX_PAGE + 1}, m.CatchupRequest) == ErrorCode.BAD_REQUEST
    assert _code({"stream": "chat:o:o1", "limit": 0}, m.HistoryRequest) == ErrorCode.BAD_REQUEST
    assert _code({"limit": m.MAX_PAGE + 1}, m.OrderListRequest) == ErrorCode.BAD_REQUEST


def test_negative_seq_rejected() -> None:
    assert _code({"cursors": [{"stream": "inbox:u:u1", "seq": -1}]}, m.SyncRequest) == ErrorCode.BAD_REQUEST


def test_too_many_cursors_rejected() -> None:
    cursors = [{"stream": f"inbox:u:u{i}"} for i in range(m.MAX_CURSORS + 1)]
    assert _code({"cursors": cursors}, m.SyncRequest) == ErrorCode.BAD_REQUEST


def test_empty_chat_text_rejected() -> None:
    assert _code({"stream": "chat:o:o1", "client_id": "c1", "text": ""}, m.ChatSend) == ErrorCode.BAD_REQUEST


def test_unknown_category_rejected() -> None:
    assert _code({"muted": ["order", "spam"]}, m.PrefsRequest) == ErrorCode.BAD_REQUEST


def test_categories_tuple_matches_literal() -> None:
    assert set(m.CATEGORIES) == set(get_args(m.Category))


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (
            {"type": "order.created", "event_id": "e1", "order_id": "o1", "shopper_id": "s1",
             "boutique_id": "b1", "total_cents": 1250, "currency": "KES"},
            m.OrderCreated,
        ),
        ({"type": "order.status_updated", "event_id": "e2", "order_id": "o1", "status": "ready"},
         m.OrderStatusUpdated),
        ({"type": "delivery.assigned", "event_id": "e3", "order_id": "o1", "driver_id": "d1"},
         m.DeliveryAssigned),
    ],
)  # fmt: skip
def test_order_event_union_decodes_by_type(payload: dict[str, Any], kind: type) -> None:
    event = decode_value(payload, m.OrderEvent)  # type: ignore[arg-type]
    assert type(event) is kind
    assert event.event_id == payload["event_id"]


def test_order_event_union_rejects_bad_tag_and_status() -> None:
    base = {"event_id": "e1", "order_id": "o1"}
    assert _code({**base, "type": "order.deleted"}, m.OrderEvent) == ErrorCode.BAD_REQUEST
    assert _code(base, m.OrderEvent) == ErrorCode.BAD_REQUEST
    bad_status = {**base, "type": "order.status_updated", "status": "lost"}
    assert _code(bad_status, m.OrderEvent) == ErrorCode.BAD_REQUEST


def test_decode_json_http_body() -> None:
    body = b'{"user": "u1", "category": "delivery", "title": "Driver is near"}'
    note = decode_json(body, m.NotificationCreate)
    assert (note.user, note.category, note.body, note.data, note.id) == ("u1", "delivery", "", {}, None)
    with pytest.raises(SokoError) as info:
        decode_json(b"{not json", m.NotificationCreate)
    assert info.value.code == ErrorCode.BAD_REQUEST


def test_notification_create_bounds() -> None:
    base = {"user": "u1", "category": "system"}
    assert _code({**base, "title": ""}, m.NotificationCreate) == ErrorCode.BAD_REQUEST
    assert (
        _code({**base, "title": "t" * (m.MAX_TITLE_CHARS + 1)}, m.NotificationCreate) == ErrorCode.BAD_REQUEST
    )
    many = {f"k{i}": i for i in range(m.MAX_DATA_KEYS + 1)}
    assert _code({**base, "title": "t", "data": many}, m.NotificationCreate) == ErrorCode.BAD_REQUEST


def test_durable_frames_carry_their_tag_and_round_trip() -> None:
    frame = m.ChatFrame(
        stream="chat:o:o1",
        seq=3,
        epoch="e1",
        ts=1,
        author="u1",
        author_role="shopper",
        client_id="c1",
        text="x",
    )
    wire = to_wire(frame)
    assert wire["kind"] == "chat"
    assert (wire["stream"], wire["seq"], wire["epoch"]) == ("chat:o:o1", 3, "e1")
    assert msgspec.convert(wire, m.DurableFrame) == frame
    assert msgspec.json.decode(encode_json(frame)) == wire


def test_ack_envelopes() -> None:
    assert to_wire(m.AckOk(data=None)) == {"ok": True, "data": None}
    err = SokoError(ErrorCode.RATE_LIMITED, "slow down").body()
    assert to_wire(m.AckError(error=err)) == {
        "ok": False,
        "error": {"code": 3001, "name": "rate_limited", "message": "slow down", "temporary": True},
    }


# ---------------------------------------------------------------- ids


def test_stream_builders_round_trip() -> None:
    kind = ids.StreamKind
    cases = [
        (
            ids.boutique_chat("b1", "s-1"),
            ids.StreamRef(kind.BOUTIQUE_CHAT, boutique_id="b1", shopper_id="s-1"),
        ),
        (ids.order_chat("o_1"), ids.StreamRef(kind.ORDER_CHAT, order_id="o_1")),
        (ids.user_inbox("u1"), ids.StreamRef(kind.USER_INBOX, user_id="u1")),
        (ids.boutique_inbox("b1"), ids.StreamRef(kind.BOUTIQUE_INBOX, boutique_id="b1")),
    ]
    for stream, ref in cases:
        assert ids.parse_stream(stream) == ref
        assert ids.STREAM_RE.fullmatch(stream)
        # A built stream id is accepted by the wire type too.
        assert decode_value({"stream": stream}, m.TypingRequest).stream == stream
    assert [s for s, _ in cases] == ["chat:b:b1:s-1", "chat:o:o_1", "inbox:u:u1", "inbox:b:b1"]


@pytest.mark.parametrize("bad", ["", "a:b", "$where", "a b", "x" * 65, "a\n"])
def test_builders_reject_bad_ids(bad: str) -> None:
    for build in (ids.order_chat, ids.user_inbox, ids.boutique_inbox):
        with pytest.raises(ValueError):
            build(bad)
    with pytest.raises(ValueError):
        ids.boutique_chat("b1", bad)
    with pytest.raises(ValueError):
        ids.boutique_chat(bad, "s1")


@pytest.mark.parametrize(
    "bad",
    ["", "chat:o", "chat:o:", "chat:b:b1", "chat:o:a:b", "inbox:x:u1", "room:o1", "chat:o:a\n", 42, None],
)
def test_parse_stream_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        ids.parse_stream(bad)


def test_is_id() -> None:
    assert ids.is_id("01JD3M5Z6Q8W9X0Y1Z2A3B4C5D")
    assert ids.is_id("a" * 64)
    assert not ids.is_id("a" * 65)
    assert not ids.is_id(7)
    assert not ids.is_id("a\n")
