"""Settings from the environment: parsing, and values that would break the hub refused with their name."""

from __future__ import annotations

import pytest

from hub.config import Settings


def test_environment_values_are_parsed() -> None:
    settings = Settings.from_env(
        env={
            "SOKO_BROKER": "redis://r:6379/0",
            "SOKO_PRESENCE_TTL": "2.5",
            "SOKO_ALLOW_ORIGIN": "https://a, https://b",
        }
    )
    assert (settings.broker, settings.presence_ttl) == ("redis://r:6379/0", 2.5)
    assert settings.allow_origin == ("https://a", "https://b")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SOKO_RATE_PER_SECOND", "0"), ("SOKO_RATE_BURST", "-1"), ("SOKO_PRESENCE_TTL", "0")],
)
def test_values_that_would_divide_by_zero_or_spin_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        Settings.from_env(env={variable: value})


def test_an_unparsable_value_names_its_variable() -> None:
    with pytest.raises(ValueError, match="SOKO_PORT"):
        Settings.from_env(env={"SOKO_PORT": "eighty"})
