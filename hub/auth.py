"""JWT handshake authentication: who a connection or HTTP caller is.

Tokens are verified with a pinned algorithm, a required ``exp`` and the configured
``aud``. The local secret (HS256) lives in ``<data>/jwt.secret`` with mode 0600, or
in ``SOKO_JWT_SECRET``; production can instead configure a public key so that only
the marketplace's auth service can mint tokens.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from hub.config import Settings
from protocol.errors import ErrorCode, SokoError
from protocol.ids import Role, is_id

SECRET_FILE = "jwt.secret"  # noqa: S105 - a file name, not a secret
_ASYMMETRIC = frozenset({"RS256", "ES256"})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``boutique`` is set for staff and devices only."""

    sub: str
    role: Role
    boutique: str | None
    expires_at: float

    @property
    def party(self) -> str:
        """The side this principal speaks for in a conversation."""
        if self.role is Role.STAFF and self.boutique is not None:
            return f"boutique:{self.boutique}"
        return f"user:{self.sub}"


def load_or_create_secret(data_dir: Path) -> str:
    """Return the local HS256 secret, creating it (mode 0600) on first use."""
    path = data_dir / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret.encode())
    finally:
        os.close(fd)
    return secret


class TokenVerifier:
    """Verifies tokens for one hub. Thread-safe and immutable."""

    def __init__(self, settings: Settings) -> None:
        self._audience = settings.jwt_audience
        if settings.jwt_public_key:
            if settings.jwt_algorithm not in _ASYMMETRIC:
                raise ValueError("a public key needs SOKO_JWT_ALGORITHM=RS256 or ES256")
            self._key: str = Path(settings.jwt_public_key).read_text()
            self._algorithm = settings.jwt_algorithm
        else:
            self._key = settings.jwt_secret or load_or_create_secret(settings.data)
            self._algorithm = "HS256"

    def verify(self, token: object) -> Principal:
        """Decode and check ``token``.

        Raises:
            SokoError: TOKEN_EXPIRED for an expired token, UNAUTHENTICATED for anything
                else wrong (missing, malformed, bad signature, other algorithm, wrong
                audience, unknown role, bad ids).
        """
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise SokoError(ErrorCode.UNAUTHENTICATED, 'a token is required: auth {"token": "<JWT>"}')
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise SokoError(ErrorCode.TOKEN_EXPIRED, "token expired") from None
        except jwt.InvalidTokenError as exc:
            raise SokoError(ErrorCode.UNAUTHENTICATED, f"invalid token: {exc}") from None
        try:
            role = Role(str(claims.get("role", "")))
        except ValueError:
            raise SokoError(ErrorCode.UNAUTHENTICATED, "invalid token: unknown role") from None
        sub, boutique = claims["sub"], claims.get("boutique")
        if not is_id(sub) or (boutique is not None and not is_id(boutique)):
            raise SokoError(ErrorCode.UNAUTHENTICATED, "invalid token: malformed sub or boutique")
        if role in (Role.STAFF, Role.DEVICE) and boutique is None:
            raise SokoError(ErrorCode.UNAUTHENTICATED, f"invalid token: a {role} token needs a boutique")
        return Principal(sub=sub, role=role, boutique=boutique, expires_at=float(claims["exp"]))


def issue_token(
    secret: str, *, role: Role, sub: str, boutique: str | None, ttl: float, audience: str = "soko-live"
) -> str:
    """Mint an HS256 token the local hub accepts.

    Raises:
        ValueError: for malformed ids or a staff/device token without a boutique.
    """
    if not is_id(sub) or (boutique is not None and not is_id(boutique)):
        raise ValueError("sub and boutique must match [A-Za-z0-9_-]{1,64}")
    if role in (Role.STAFF, Role.DEVICE) and boutique is None:
        raise ValueError(f"a {role} token needs --boutique")
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": sub,
        "role": str(role),
        "aud": audience,
        "iat": now,
        "exp": now + int(ttl),
    }
    if boutique is not None:
        claims["boutique"] = boutique
    return jwt.encode(claims, secret, algorithm="HS256")
