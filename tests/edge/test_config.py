"""edge.config: a valid file loads as written; every mistake is a ConfigError naming the file and
the field in the file's own terms."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import edge
import edge.config
from edge.config import ConfigError, GatewayConfig, load_config, parse_config

BASE = """\
boutique = "b1"

[hub]
url = "https://hub.example.com"
token_file = "device.token"
batch = 50

[mqtt]
host = "10.0.0.2"
port = 1883
topic = "store/{boutique}/shelf/{shelf}/{sensor}"

[outbox]
path = "queue/outbox.db"
max_events = 100

[smoothing]
settle_s = 1.5

[[sensors]]
shelf = "A1"
sensor = "w1"
sku = "tea"
kind = "weight"
capacity = 12
unit_weight = 512.0
tare = 1830.0

[[sensors]]
shelf = "A2"
sensor = "w1"
sku = "coffee"
kind = "weight"
capacity = 20
unit_weight = 262.5
tolerance = 0.15

[[sensors]]
shelf = "B1"
sensor = "c1"
sku = "honey"
kind = "count"
capacity = 30
"""


HEADER = BASE.split("[[sensors]]", maxsplit=1)[0]
"""BASE without its sensors."""


def edited(old: str, new: str, count: int = 1) -> str:
    """BASE with ``old`` (which must occur exactly ``count`` times) replaced by ``new``."""
    assert BASE.count(old) == count, old
    return BASE.replace(old, new)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "store.toml")
    return str(info.value)


def test_base_parses_as_written() -> None:
    cfg = parse_config(BASE, "store.toml")
    assert cfg.boutique == "b1"
    assert cfg.hub.url == "https://hub.example.com"
    assert cfg.hub.batch == 50
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.keepalive) == ("10.0.0.2", 1883, 30)
    assert cfg.smoothing.settle_s == 1.5
    assert cfg.smoothing.silent_after_s == 60.0
    assert [s.key for s in cfg.sensors] == ["A1/w1", "A2/w1", "B1/c1"]
    tea, coffee, honey = cfg.sensors
    assert (tea.kind, tea.unit_weight, tea.tare, tea.tolerance) == ("weight", 512.0, 1830.0, 0.2)
    assert coffee.tolerance == 0.15
    assert (honey.kind, honey.unit_weight, honey.capacity) == ("count", None, 30)
    assert cfg.client_id() == "soko-edge-b1"
    # Without base_dir, paths stay as written.
    assert cfg.outbox.path == "queue/outbox.db"
    assert cfg.hub.token_file == "device.token"


def test_sections_with_defaults_may_be_left_out() -> None:
    text = 'boutique = "b1"\n[hub]\nurl = "http://127.0.0.1:8080"\n[[sensors]]\n'
    text += 'shelf = "s"\nsensor = "c"\nsku = "k"\nkind = "count"\ncapacity = 3\n'
    cfg = parse_config(text)
    assert cfg.mqtt.topic == "store/{boutique}/shelf/{shelf}/{sensor}"
    assert cfg.outbox.max_events == 10000
    assert cfg.smoothing.tick_s == 0.25
    assert cfg.hub.token_file is None


def test_explicit_client_id_wins() -> None:
    cfg = parse_config(edited('host = "10.0.0.2"', 'host = "10.0.0.2"\nclient_id = "gw-7"'))
    assert cfg.client_id() == "gw-7"


def test_load_config_resolves_relative_paths_against_the_file(tmp_path: Path) -> None:
    store = tmp_path / "etc" / "store.toml"
    store.parent.mkdir()
    store.write_text(BASE, encoding="utf-8")
    cfg = load_config(store)
    assert cfg.outbox.path == str(tmp_path / "etc" / "queue" / "outbox.db")
    assert cfg.hub.token_file == str(tmp_path / "etc" / "device.token")

    store.write_text(edited('path = "queue/outbox.db"', f'path = "{tmp_path / "abs.db"}"'), encoding="utf-8")
    assert load_config(store).outbox.path == str(tmp_path / "abs.db")


def test_example_file_loads() -> None:
    example = Path(edge.__file__).parent / "example.toml"
    cfg = load_config(example)
    assert isinstance(cfg, GatewayConfig)
    assert {s.kind for s in cfg.sensors} == {"weight", "count"}
    assert len(cfg.sensors) >= 4
    assert cfg.outbox.path == str(example.parent / "edge-outbox.db")


def test_the_documented_format_is_a_valid_config() -> None:
    """The module docstring's example (copied to the README) parses, with every key it shows."""
    doc = edge.config.__doc__
    assert doc is not None
    block = doc.split("says otherwise::\n", 1)[1].split("\nRules beyond the types:", 1)[0]
    cfg = parse_config(textwrap.dedent(block), "docstring")
    assert cfg.client_id() == "soko-edge-nairobi-cbd"
    assert (cfg.mqtt.username, cfg.hub.token_file) == ("edge", "device.token")
    assert [s.kind for s in cfg.sensors] == ["weight", "count"]


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read: "):
        load_config(missing)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'boutique = "b1"\nname = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(binary)
    assert str(info.value) == f"{binary}: line 2: not UTF-8 text"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            edited("port = 1883", 'port = "abc"'),
            'store.toml: mqtt.port: expected an integer, got "abc"',
            id="wrong-type",
        ),
        pytest.param(
            edited("port = 1883", "port = 70000"),
            "store.toml: mqtt.port: must be <= 65535, got 70000",
            id="out-of-range",
        ),
        pytest.param(
            edited('boutique = "b1"\n', ""),
            "store.toml: boutique: missing required field",
            id="missing-top-level",
        ),
        pytest.param(
            edited('shelf = "A2"\n', ""),
            "store.toml: sensors[1].shelf: missing required field",
            id="missing-in-sensor",
        ),
        pytest.param(
            edited("unit_weight = 262.5\n", ""),
            "store.toml: sensors[1].unit_weight: required for a weight sensor",
            id="weight-needs-unit-weight",
        ),
        pytest.param(
            edited("unit_weight = 262.5", "unit_weight = 0"),
            "store.toml: sensors[1].unit_weight: must be > 0.0, got 0",
            id="unit-weight-positive",
        ),
        pytest.param(
            edited("capacity = 30", "capacity = 30\nunit_weight = 10.0"),
            "store.toml: sensors[2].unit_weight: only for weight sensors (this is a count sensor)",
            id="count-rejects-unit-weight",
        ),
        pytest.param(
            edited("capacity = 30", "capacity = 30\ntare = 5.0"),
            "store.toml: sensors[2].tare: only for weight sensors (this is a count sensor)",
            id="count-rejects-tare",
        ),
        pytest.param(
            edited("capacity = 12", "capacity = 12\ncolour = 'red'"),
            "store.toml: sensors[0].colour: unknown field (expected one of: shelf, sensor, sku, kind,"
            " capacity, unit_weight, tare, tolerance)",
            id="unknown-field",
        ),
        pytest.param(
            edited("[mqtt]", "[mqqt]"),
            "store.toml: mqqt: unknown field (did you mean mqtt?)",
            id="misspelt-section",
        ),
        pytest.param(
            edited("tolerance = 0.15", "tolerance = 0.5"),
            "store.toml: sensors[1].tolerance: must be < 0.5, got 0.5",
            id="tolerance-too-wide",
        ),
        pytest.param(
            edited("tolerance = 0.15", "tolerance = 0"),
            "store.toml: sensors[1].tolerance: must be > 0.0, got 0",
            id="tolerance-zero",
        ),
        pytest.param(
            edited("tare = 1830.0", "tare = nan"),
            "store.toml: sensors[0].tare: must be a finite number, got nan",
            id="nan",
        ),
        pytest.param(
            edited('kind = "count"', 'kind = "scale"'),
            'store.toml: sensors[2].kind: must be "count" or "weight", got "scale"',
            id="bad-kind",
        ),
        pytest.param(
            edited("capacity = 12", "capacity = 0"),
            "store.toml: sensors[0].capacity: must be >= 1, got 0",
            id="capacity-zero",
        ),
        pytest.param(
            edited("capacity = 12", "capacity = 2.5"),
            "store.toml: sensors[0].capacity: expected an integer, got 2.5",
            id="capacity-float",
        ),
        pytest.param(
            edited('sku = "tea"', 'sku = "green tea"'),
            'store.toml: sensors[0].sku: must be an id (1 to 64 of A-Z a-z 0-9 _ -), got "green tea"',
            id="bad-id",
        ),
        pytest.param(
            edited('boutique = "b1"', 'boutique = "b1\\n"'),
            'store.toml: boutique: must be an id (1 to 64 of A-Z a-z 0-9 _ -), got "b1\\n"',
            id="id-with-trailing-newline",
        ),
        pytest.param(
            edited('shelf = "A2"\nsensor = "w1"', 'shelf = "A1"\nsensor = "w1"'),
            'store.toml: sensors[1]: shelf "A1" sensor "w1" is already sensors[0]',
            id="duplicate-sensor",
        ),
        pytest.param(
            edited('sku = "honey"', 'sku = "tea"'),
            'store.toml: sensors[2].sku: "tea" is already watched by sensors[0]'
            " (the hub keeps one level per SKU)",
            id="duplicate-sku",
        ),
        pytest.param(
            edited('topic = "store/{boutique}/shelf/{shelf}/{sensor}"', 'topic = "store/{shelf}"'),
            'store.toml: mqtt.topic: must contain {sensor} exactly once, got "store/{shelf}"',
            id="topic-without-sensor",
        ),
        pytest.param(
            edited('/{sensor}"', '/{sensor}/{zone}"'),
            "store.toml: mqtt.topic: unknown placeholder {zone}; use {boutique}, {shelf} and {sensor}",
            id="topic-unknown-placeholder",
        ),
        pytest.param(
            edited("{shelf}/{sensor}", "{shelf}-{sensor}"),
            'store.toml: mqtt.topic: each placeholder must be a whole topic level, got "{shelf}-{sensor}"',
            id="topic-partial-level",
        ),
        pytest.param(
            edited("store/{boutique}/", "store/+/"),
            "store.toml: mqtt.topic: must not contain the MQTT wildcards + or #,"
            ' got "store/+/shelf/{shelf}/{sensor}"',
            id="topic-wildcard",
        ),
        pytest.param(
            edited("max_events = 100", "max_events = 5"),
            "store.toml: outbox.max_events: must be at least 2 x 3 sensors = 6, got 5",
            id="outbox-too-small",
        ),
        pytest.param(
            edited("batch = 50", "batch = 101"),
            "store.toml: hub.batch: must be <= 100, got 101",
            id="batch-too-big",
        ),
        pytest.param(
            edited("batch = 50", "batch = 0"),
            "store.toml: hub.batch: must be >= 1, got 0",
            id="batch-zero",
        ),
        pytest.param(
            edited('url = "https://hub.example.com"', 'url = "ws://hub.example.com"'),
            'store.toml: hub.url: must start with http:// or https:// and name a host, got "ws://hub.example.com"',
            id="hub-url-scheme",
        ),
        pytest.param(
            edited('host = "10.0.0.2"', 'host = "10.0.0.2"\npassword = "pw"'),
            "store.toml: mqtt.password: needs mqtt.username",
            id="password-without-username",
        ),
        pytest.param(
            edited("settle_s = 1.5", "settle_s = -1.0"),
            "store.toml: smoothing.settle_s: must be >= 0.0, got -1.0",
            id="negative-settle",
        ),
        pytest.param(
            HEADER,
            "store.toml: sensors: missing required field",
            id="no-sensors",
        ),
        pytest.param(
            HEADER + "sensors = []\n",
            "store.toml: smoothing.sensors: unknown field"
            " (expected one of: settle_s, silent_after_s, tick_s)",
            id="key-after-table-header",
        ),
        pytest.param(
            "sensors = []\n" + HEADER,
            "store.toml: sensors: needs at least 1 entry",
            id="empty-sensors",
        ),
        pytest.param(
            "mqtt = 5\n" + BASE,
            "store.toml: line 9: invalid TOML (Cannot overwrite a value, at column 6)",
            id="toml-redeclared",
        ),
    ],
)
def test_mistakes_name_the_field(text: str, message: str) -> None:
    assert error(text) == message


def test_invalid_toml_names_the_line() -> None:
    text = edited("port = 1883", "port = 18 83")
    assert error(text) == (
        "store.toml: line 10: invalid TOML"
        " (Expected newline or end of document after a statement, at column 11)"
    )
    assert error('boutique = "b1"\nname = "unterminated\n').startswith("store.toml: line 2: invalid TOML (")
