"""The gateway's configuration: one TOML file per store, validated in full at start.

:func:`load_config` reads the file; :func:`parse_config` checks text. Either returns a frozen
:class:`GatewayConfig` or raises :class:`ConfigError`, whose message names the file and the
field in the file's own terms, then says what is wrong::

    store.toml: line 7: invalid TOML (Invalid value, at column 9)
    store.toml: boutique: missing required field
    store.toml: mqtt.port: expected an integer, got "abc"
    store.toml: sensors[2].unit_weight: required for a weight sensor
    store.toml: sensors[0].colour: unknown field (expected one of: shelf, sensor, sku, ...)

``sensors[i]`` counts the ``[[sensors]]`` blocks from 0, in file order. The first mistake
found is reported. No value is ever guessed: a wrong type is an error, not a conversion.

File format, every key shown. Required: ``boutique``, ``hub.url``, at least one ``[[sensors]]``
block, and in each its ``shelf``, ``sensor``, ``sku``, ``kind``, ``capacity`` (and ``unit_weight``
for a weight sensor). Every other key is optional, and the value shown is its default unless
its comment says otherwise::

    boutique = "nairobi-cbd"          # the boutique's id on the hub

    [hub]
    url = "https://hub.example.com"   # http:// or https://
    token_file = "device.token"       # optional: a file holding a device token (`soko token --role device`)
    batch = 100                       # events per stock.update, 1..100

    [mqtt]
    host = "127.0.0.1"
    port = 1883
    client_id = "soko-edge-nairobi-cbd"   # default: "soko-edge-<boutique>"; the persistent session's key
    topic = "store/{boutique}/shelf/{shelf}/{sensor}"
    username = "edge"                 # optional; password needs a username
    password = "secret"               # optional
    keepalive = 30                    # seconds, 0..65535

    [outbox]
    path = "edge-outbox.db"           # SQLite file
    max_events = 10000                # queued events before coalescing; >= 2 x number of sensors

    [smoothing]
    settle_s = 2.0                    # a new count must hold this long before it is sent
    silent_after_s = 60.0             # no reading this long: the sensor is reported silent
    tick_s = 0.25                     # how often pending changes and silence are checked

    [[sensors]]                       # a load cell under a shelf
    shelf = "A1"
    sensor = "scale"
    sku = "tea-500g"
    kind = "weight"
    capacity = 12                     # most units the shelf holds
    unit_weight = 512.0               # grams per unit (required for weight sensors)
    tare = 1830.0                     # grams read with the shelf empty; default 0.0
    tolerance = 0.2                   # fraction of unit_weight, 0 < t < 0.5

    [[sensors]]                       # a sensor that reports a unit count itself
    shelf = "B2"
    sensor = "counter"
    sku = "honey-250g"
    kind = "count"
    capacity = 30

Rules beyond the types:

* ``boutique``, ``shelf``, ``sensor`` and ``sku`` are ids: 1 to 64 of ``A-Z a-z 0-9 _ -``.
* Each (``shelf``, ``sensor``) pair appears once, and each ``sku`` is watched by one sensor
  (the hub keeps one level per SKU, so two sensors would overwrite each other).
* ``unit_weight`` and ``tare`` belong to weight sensors only; ``tolerance`` is ignored for
  count sensors.
* ``mqtt.topic`` contains ``{shelf}`` and ``{sensor}`` once each, may contain ``{boutique}``,
  and nothing else in braces. Each placeholder fills a whole topic level (between ``/``), so
  the gateway can subscribe with ``+`` wildcards; the MQTT wildcards ``+`` and ``#`` may not
  appear literally.
* Every number is finite (TOML's ``inf`` and ``nan`` are refused).
* Relative ``outbox.path`` and ``hub.token_file`` are relative to the config file's
  directory (``~`` is expanded), so the gateway does not depend on where it was started.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import string
import tomllib
from collections.abc import Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi

from protocol.ids import ID_PATTERN

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "HubConfig",
    "MqttConfig",
    "OutboxConfig",
    "SensorConfig",
    "SmoothingConfig",
    "load_config",
    "parse_config",
]

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
TOPIC_PLACEHOLDERS = frozenset({"boutique", "shelf", "sensor"})


class ConfigError(ValueError):
    """A configuration mistake; ``str()`` is ``"<file>: <where>: <what is wrong>"``."""


class SensorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One shelf sensor and the SKU it watches."""

    shelf: Id
    sensor: Id
    sku: Id
    kind: Literal["weight", "count"]
    capacity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]
    """Most units the shelf holds."""
    unit_weight: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Grams per unit: required for weight sensors, rejected for count sensors."""
    tare: float = 0.0
    """Grams the scale reads with the shelf empty (weight sensors only)."""
    tolerance: Annotated[float, msgspec.Meta(gt=0, lt=0.5)] = 0.2
    """How far from a whole count, as a fraction of ``unit_weight``, a reading may be and
    still count as that many units (weight sensors only)."""

    @property
    def key(self) -> str:
        """``"<shelf>/<sensor>"``: unique within a gateway."""
        return f"{self.shelf}/{self.sensor}"


class MqttConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The store's MQTT broker and the topics sensors publish on."""

    host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1883
    client_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    topic: str = "store/{boutique}/shelf/{shelf}/{sensor}"
    username: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    password: str | None = None
    keepalive: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 30


class HubConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Where the uplink delivers events."""

    url: str
    """``http://`` or ``https://`` base URL of a hub node."""
    token_file: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """File holding the device token; absolute after :func:`load_config`."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=100)] = 100


class OutboxConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The on-disk queue of events not yet acknowledged by the hub."""

    path: Annotated[str, msgspec.Meta(min_length=1)] = "edge-outbox.db"
    """SQLite file; absolute after :func:`load_config`."""
    max_events: Annotated[int, msgspec.Meta(ge=2)] = 10000
    """Queued events before stock events are coalesced per SKU; at least 2 per sensor."""


class SmoothingConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Debounce and health timing, in seconds."""

    settle_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    silent_after_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    tick_s: Annotated[float, msgspec.Meta(gt=0)] = 0.25


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A whole, validated gateway configuration."""

    boutique: Id
    hub: HubConfig
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    outbox: OutboxConfig = msgspec.field(default_factory=OutboxConfig)
    smoothing: SmoothingConfig = msgspec.field(default_factory=SmoothingConfig)
    sensors: Annotated[list[SensorConfig], msgspec.Meta(min_length=1)]

    def client_id(self) -> str:
        """The MQTT client id: ``mqtt.client_id`` or ``"soko-edge-<boutique>"``."""
        return self.mqtt.client_id or f"soko-edge-{self.boutique}"


def load_config(path: Path) -> GatewayConfig:
    """Read and validate the TOML file at ``path``.

    Relative ``outbox.path`` and ``hub.token_file`` are resolved against ``path``'s directory.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 TOML, or breaks a rule; the
            message starts with ``str(path)``.
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}: line {line}: not UTF-8 text") from None
    return parse_config(text, source, base_dir=path.parent)


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> GatewayConfig:
    """Validate TOML ``text``; ``source`` names it in errors.

    With ``base_dir``, relative ``outbox.path`` and ``hub.token_file`` are joined to it;
    without, they are returned as written.

    Raises:
        ConfigError: on the first mistake found, as ``"<source>: <where>: <what>"``.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {_toml_error(str(exc), text)}") from None
    try:
        config = msgspec.convert(data, GatewayConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_translate(str(exc), data)}") from None
    problem = _check(config, data)
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    return config


_TOML_POS = re.compile(
    r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$", re.S
)


def _toml_error(message: str, text: str) -> str:
    match = _TOML_POS.match(message)
    if match is None:
        return f"invalid TOML ({message})"
    if match["line"] is None:
        # tomllib reports some mistakes (a repeated key, an unclosed string) only at the end.
        last = len(text.rstrip().splitlines()) or 1
        return f"line {last}: invalid TOML ({match['msg']}, at end of file)"
    return f"line {match['line']}: invalid TOML ({match['msg']}, at column {match['col']})"


# ---------------------------------------------------------------------------------------------
# msgspec's "Expected `int`, got `str` - at `$.mqtt.port`" -> "mqtt.port: expected an integer, got "abc""

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "an array",
}
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`$")
_WRONG_TYPE = re.compile(r"^Expected `(?P<want>[^`]*)`, got `[^`]*`$")
_BOUND = re.compile(r"^Expected `(?P<type>[^`]*)` (?P<op>>=|<=|>|<) (?P<bound>\S+)$")
_LENGTH = re.compile(r"^Expected `(?P<type>str|array)` of length (?P<op>>=|<=) (?P<bound>\d+)$")
_REGEX = re.compile(r"^Expected `str` matching regex (?P<regex>.*)$", re.S)
_ENUM = re.compile(r"^Invalid enum value (?P<value>.*)$", re.S)


def _translate(message: str, data: dict[str, Any]) -> str:
    at = _AT.match(message)
    assert at is not None  # the pattern matches every string
    what = at["what"]
    parts: list[str | int] = [
        name if name else int(index) for name, index in _PATH_PART.findall(at["path"] or "")
    ]
    if match := _MISSING.match(what):
        return f"{_where([*parts, match['field']])}: missing required field"
    if match := _UNKNOWN.match(what):
        field = match["field"]
        known = _field_names(parts)
        hint = ""
        if known:
            close = difflib.get_close_matches(field, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (expected one of: {', '.join(known)})"
        return f"{_where([*parts, field])}: unknown field{hint}"
    got = _got(data, parts)
    where = _where(parts)
    if match := _WRONG_TYPE.match(what):
        want = " or ".join(_TYPE_NAMES.get(t, t) for t in match["want"].split(" | ") if t != "null")
        return f"{where}: expected {want}{got}"
    if match := _LENGTH.match(what):
        bound = int(match["bound"])
        if match["type"] == "str":
            rule = (
                "must not be empty"
                if bound == 1 and match["op"] == ">="
                else f"length must be {match['op']} {bound}"
            )
        else:
            noun = "entry" if bound == 1 else "entries"
            rule = (
                f"needs at least {bound} {noun}" if match["op"] == ">=" else f"allows at most {bound} {noun}"
            )
        return f"{where}: {rule}"
    if match := _BOUND.match(what):
        return f"{where}: must be {match['op']} {match['bound']}{got}"
    if match := _REGEX.match(what):
        if match["regex"] == repr(ID_PATTERN):
            rule = "must be an id (1 to 64 of A-Z a-z 0-9 _ -)"
        else:
            rule = f"must match {match['regex']}"
        return f"{where}: {rule}{got}"
    if _ENUM.match(what):
        options = _literal_values(parts)
        allowed = " or ".join(_describe(option) for option in options)
        return f"{where}: must be {allowed}{got}"
    return f"{where}: {what[:1].lower()}{what[1:]}"


def _where(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _got(data: Any, parts: Sequence[str | int]) -> str:
    """``", got <the value at parts>"``, or "" when msgspec's path cannot be followed (a quoted
    TOML key holding a dot reads like two keys)."""
    try:
        for part in parts:
            data = data[part]
    except (KeyError, IndexError, TypeError):
        return ""
    return f", got {_describe(data)}"


def _type_at(parts: Sequence[str | int]) -> mi.Type | None:
    """The msgspec type at ``parts`` inside :class:`GatewayConfig` (None when unknown)."""
    current: mi.Type = mi.type_info(GatewayConfig)
    for part in parts:
        if isinstance(current, mi.UnionType):
            current = next(t for t in current.types if not isinstance(t, mi.NoneType))
        if isinstance(part, int) and isinstance(current, mi.ListType):
            current = current.item_type
        elif isinstance(part, str) and isinstance(current, mi.StructType):
            field = next((f for f in current.fields if f.encode_name == part), None)
            if field is None:
                return None
            current = field.type
        else:
            return None
    return current


def _field_names(parts: Sequence[str | int]) -> list[str]:
    struct = _type_at(parts)
    return [f.encode_name for f in struct.fields] if isinstance(struct, mi.StructType) else []


def _literal_values(parts: Sequence[str | int]) -> tuple[Any, ...]:
    literal = _type_at(parts)
    return literal.values if isinstance(literal, mi.LiteralType) else ()


def _describe(value: Any) -> str:
    """A value as the user would recognise it from their TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# Rules msgspec's types cannot state.


def _check(config: GatewayConfig, data: dict[str, Any]) -> str | None:
    problem = (
        _finite(config.hub, "hub")
        or _finite(config.mqtt, "mqtt")
        or _finite(config.outbox, "outbox")
        or _finite(config.smoothing, "smoothing")
        or _check_hub(config.hub)
        or _check_mqtt(config.mqtt)
    )
    if problem:
        return problem
    raw_sensors: list[dict[str, Any]] = data["sensors"]
    seen_keys: dict[tuple[str, str], int] = {}
    seen_skus: dict[str, int] = {}
    for index, sensor in enumerate(config.sensors):
        where = f"sensors[{index}]"
        problem = _finite(sensor, where) or _check_sensor(sensor, raw_sensors[index], where)
        if problem:
            return problem
        pair = (sensor.shelf, sensor.sensor)
        if pair in seen_keys:
            return (
                f"{where}: shelf {json.dumps(sensor.shelf)} sensor {json.dumps(sensor.sensor)}"
                f" is already sensors[{seen_keys[pair]}]"
            )
        seen_keys[pair] = index
        if sensor.sku in seen_skus:
            return (
                f"{where}.sku: {json.dumps(sensor.sku)} is already watched by"
                f" sensors[{seen_skus[sensor.sku]}] (the hub keeps one level per SKU)"
            )
        seen_skus[sensor.sku] = index
    needed = 2 * len(config.sensors)
    if config.outbox.max_events < needed:
        return (
            f"outbox.max_events: must be at least 2 x {len(config.sensors)} sensors = {needed},"
            f" got {config.outbox.max_events}"
        )
    return None


def _finite(struct: msgspec.Struct, where: str) -> str | None:
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where}.{name}: must be a finite number, got {value!r}"
    return None


def _check_hub(hub: HubConfig) -> str | None:
    url = urlsplit(hub.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        return f"hub.url: must start with http:// or https:// and name a host, got {_describe(hub.url)}"
    return None


def _check_mqtt(mqtt: MqttConfig) -> str | None:
    if mqtt.password is not None and mqtt.username is None:
        return "mqtt.password: needs mqtt.username"
    topic = mqtt.topic
    where = "mqtt.topic"
    if "+" in topic or "#" in topic:
        return f"{where}: must not contain the MQTT wildcards + or #, got {_describe(topic)}"
    try:
        fields = list(string.Formatter().parse(topic))
    except ValueError as exc:
        return f"{where}: {exc}, got {_describe(topic)}"
    names: list[str] = []
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in TOPIC_PLACEHOLDERS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            return f"{where}: unknown placeholder {shown}; use {{boutique}}, {{shelf}} and {{sensor}}"
        names.append(name)
    for required in ("shelf", "sensor"):
        if names.count(required) != 1:
            return f"{where}: must contain {{{required}}} exactly once, got {_describe(topic)}"
    if names.count("boutique") > 1:
        return f"{where}: may contain {{boutique}} at most once, got {_describe(topic)}"
    for level in topic.split("/"):
        if "{" in level and level not in {"{" + name + "}" for name in TOPIC_PLACEHOLDERS}:
            return f"{where}: each placeholder must be a whole topic level, got {_describe(level)}"
    return None


def _check_sensor(sensor: SensorConfig, raw: dict[str, Any], where: str) -> str | None:
    if sensor.kind == "weight":
        if sensor.unit_weight is None:
            return f"{where}.unit_weight: required for a weight sensor"
        return None
    for name in ("unit_weight", "tare"):
        if name in raw:
            return f"{where}.{name}: only for weight sensors (this is a count sensor)"
    return None


def _resolve_paths(config: GatewayConfig, base_dir: Path) -> GatewayConfig:
    def resolve(value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base_dir / path)

    hub = config.hub
    if hub.token_file is not None:
        hub = msgspec.structs.replace(hub, token_file=resolve(hub.token_file))
    outbox = msgspec.structs.replace(config.outbox, path=resolve(config.outbox.path))
    return msgspec.structs.replace(config, hub=hub, outbox=outbox)
