"""API key values: generation, hashing, display prefixes, expiry durations, and key records."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

__all__ = [
    "KEY_PREFIX",
    "KeyRecord",
    "KeyStatus",
    "display_prefix",
    "generate_key",
    "hash_key",
    "parse_duration",
]

KEY_PREFIX = "tg-"
# "tg-" plus 8 random characters: enough to tell keys apart in a listing, far too little to guess
# the remaining 24 (144 bits).
DISPLAY_PREFIX_LENGTH = 11

KeyStatus = Literal["active", "revoked", "expired"]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def generate_key() -> str:
    """A new secret key: ``tg-`` followed by 32 URL-safe characters (192 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up.

    A fast hash is right here: keys are random 192-bit secrets, not guessable passwords, and the
    lookup is on every request.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key that may be shown in listings, e.g. ``tg-AbCdEfGh``."""
    return key[:DISPLAY_PREFIX_LENGTH]


def parse_duration(text: str) -> timedelta:
    """Parse ``30d``, ``12h``, ``90m`` or ``3600s`` into a positive timedelta."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: use a whole number followed by s, m, h or d "
            "(for example 30d, 12h, 90m or 3600s)"
        )
    amount, unit = int(match[1]), match[2]
    if amount == 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return timedelta(seconds=amount * _UNIT_SECONDS[unit])


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is known about a key, minus the key itself and its hash."""

    id: str
    team: str
    name: str | None
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def status_at(self, now: datetime) -> KeyStatus:
        """The key's status at ``now`` (timezone-aware); revocation wins over expiry."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @property
    def status(self) -> KeyStatus:
        """The key's status now: ``active``, ``revoked`` or ``expired``."""
        return self.status_at(datetime.now(UTC))
