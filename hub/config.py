"""One frozen Settings object, read once from ``SOKO_*`` environment variables and CLI flags."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ulid import ULID


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the hub is configured with. Construct with :meth:`from_env`.

    Each field can be set with the environment variable ``SOKO_<FIELD>`` (upper case);
    tuple fields take a comma-separated list. CLI flags override the environment.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    data: Path = Path(".soko")
    """Directory for the SQLite file and the local JWT secret."""
    store: str = ""
    """Store URL; empty means ``sqlite:///<data>/soko.db``."""
    broker: str = "memory://"
    allow_origin: tuple[str, ...] = ()
    """Browser Origins allowed besides the hub's own. Requests without an Origin header (native apps) pass."""
    jwt_secret: str = ""
    """HS256 secret; empty means the secret file in the data dir (created 0600 on first use)."""
    jwt_public_key: str = ""
    """Path to a PEM public key; when set, tokens must be RS256/ES256 from the marketplace's auth service."""
    jwt_algorithm: str = "HS256"
    jwt_audience: str = "soko-live"
    max_frame_bytes: int = 64 * 1024
    rate_per_second: float = 20.0
    rate_burst: int = 40
    rate_strikes: int = 20
    """Rejected events in a row, beyond the bucket, before the socket is disconnected."""
    send_queue_max: int = 1000
    """Packets a connection may have queued before it is dropped as a slow consumer."""
    namespace_timeout: float = 10.0
    typing_interval: float = 1.0
    """Minimum seconds between two typing indicators of one socket in one stream."""
    redelivery_batch: int = 200
    """Unacked notifications pushed per inbox on connect."""
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    shutdown_grace: float = 2.0
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{str(ULID())[-6:]}")

    @property
    def store_url(self) -> str:
        """The effective store URL."""
        return self.store or f"sqlite:///{self.data / 'soko.db'}"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build settings from ``env`` (default ``os.environ``), then apply non-None ``overrides``.

        Raises:
            ValueError: naming the variable when a value cannot be parsed.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            key = f"SOKO_{f.name.upper()}"
            if key not in source:
                continue
            raw = source[key]
            current = getattr(defaults, f.name)
            try:
                values[f.name] = _parse(raw, current)
            except ValueError as exc:
                raise ValueError(f"{key}={raw!r}: {exc}") from None
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        return replace(defaults, **values)


def _parse(raw: str, current: object) -> object:
    if isinstance(current, bool):
        return raw.lower() in {"1", "true", "yes", "on"}
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(current, Path):
        return Path(raw)
    return raw
