"""API keys: created at random, shown once, stored as an HMAC, compared in constant time.

A key reads ``ea_<lookup id>_<secret>``: 12 hex characters that find its row through a unique
index, then 43 URL-safe characters (32 random bytes). The row keeps the lookup id and
HMAC-SHA256(API_KEY_SECRET, whole key); a stolen table cannot be used, nor checked offline
without the secret. Changing API_KEY_SECRET therefore invalidates every key.

Authentication costs the same work whatever the presented key's content: a key of the right shape
is always hashed and compared with :func:`hmac.compare_digest`, against a dummy hash when no row
has its lookup id. What timing can reveal is whether a lookup id exists, which grants nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from serve_app.db import audit
from serve_app.db.models import ApiKey
from serve_app.errors import ConflictError, InvalidRequestError, NotFoundError

__all__ = ["NewKey", "authenticate", "create_key", "hash_key", "list_keys", "revoke_key"]

KEY_PREFIX = "ea_"
LOOKUP_ID_BYTES = 6
SECRET_BYTES = 32
KEY_CHARS = len(KEY_PREFIX) + 2 * LOOKUP_ID_BYTES + 1 + 43  # token_urlsafe(32) is 43 characters
_KEY_SHAPE = re.compile(r"ea_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
# Names appear in logs and audit lines: no spaces or control characters to forge entries with.
_NAME_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_NO_KEY_HASH = "0" * 64  # compared against when no row matches, so that the work is the same


@dataclass(frozen=True)
class NewKey:
    """A key just created: its row, and the key itself, which exists nowhere else."""

    row: ApiKey
    plaintext: str


def hash_key(key: str, secret: SecretStr) -> str:
    """The stored form of ``key``: HMAC-SHA256 with API_KEY_SECRET, in hex."""
    digest = hmac.new(secret.get_secret_value().encode(), key.encode(), hashlib.sha256)
    return digest.hexdigest()


def create_key(
    session: Session,
    secret: SecretStr,
    name: str,
    *,
    rate_limit_per_minute: int | None = None,
    max_concurrency: int | None = None,
    source_address: str | None = None,
) -> NewKey:
    """Create key ``name``; raise :class:`ConflictError` if the name is taken."""
    _check_name(name)
    _check_positive("rate limit per minute", rate_limit_per_minute)
    _check_positive("concurrency", max_concurrency)
    lookup_id = secrets.token_hex(LOOKUP_ID_BYTES)
    plaintext = f"{KEY_PREFIX}{lookup_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKey(
        name=name,
        lookup_id=lookup_id,
        key_hash=hash_key(plaintext, secret),
        rate_limit_per_minute=rate_limit_per_minute,
        max_concurrency=max_concurrency,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    try:
        # Insert first, no read before: the unique index decides, also between racing creators.
        # (A clash of random lookup ids, odds 2**-48 per pair, would be reported the same way.)
        session.flush()
    except IntegrityError:
        raise ConflictError(f"a key named {name!r} exists already") from None
    audit.record(session, audit.AuditKind.KEY_CREATED, key_name=name, source_address=source_address)
    return NewKey(row=row, plaintext=plaintext)


def authenticate(session: Session, presented: str, secret: SecretStr) -> ApiKey | None:
    """The live key ``presented`` is, or None (unknown, malformed or revoked)."""
    # A key of the wrong length or shape (a prefix, a trailing newline, megabytes) is refused
    # before any work: that depends on the presented string only, never on a stored key.
    shape = _KEY_SHAPE.fullmatch(presented) if len(presented) == KEY_CHARS else None
    if shape is None:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.lookup_id == shape[1]))
    expected = _NO_KEY_HASH if row is None else row.key_hash
    matches = hmac.compare_digest(hash_key(presented, secret), expected)
    if row is None or not matches or row.revoked_at is not None:
        return None
    return row


def revoke_key(session: Session, name: str, *, source_address: str | None = None) -> ApiKey:
    """Revoke key ``name`` (at once); revoking a revoked key changes nothing.

    Raise :class:`NotFoundError` if there is no such key.
    """
    revoked = session.scalars(
        update(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .returning(ApiKey),
        execution_options={"populate_existing": True},
    ).one_or_none()
    if revoked is not None:
        audit.record(
            session, audit.AuditKind.KEY_REVOKED, key_name=name, source_address=source_address
        )
        return revoked
    existing = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if existing is None:
        raise NotFoundError(f"no key named {name!r}")
    return existing


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def _check_name(name: str) -> None:
    if not _NAME_SHAPE.fullmatch(name):
        raise InvalidRequestError(
            "a key name is 1 to 64 characters: letters, digits and . _ @ - "
            "(starting with a letter or digit)"
        )


def _check_positive(what: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise InvalidRequestError(f"{what} must be positive")
