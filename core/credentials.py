"""Secrets handed to nodes and API clients: generated once, shown once, stored only as a hash.

The secrets are 256-bit random strings, so a plain SHA-256 digest is as safe to store as a slow
password hash would be, and it can be looked up by index on every connection.
"""

from __future__ import annotations

import hashlib
import secrets

SECRET_BYTES = 32
PREFIX_DISPLAY_CHARS = 10


def secret_new(*, prefix: str) -> str:
    """A new secret such as ``nt_3Jc...``; the prefix says what kind of secret it is."""
    return f"{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_display_prefix(secret: str) -> str:
    """The first characters, kept in clear so operators can tell secrets apart."""
    return secret[:PREFIX_DISPLAY_CHARS]


def id_new(*, prefix: str) -> str:
    """A public identifier (``n_...``, ``s_...``, ``j_...``): random, URL- and key-safe."""
    return f"{prefix}_{secrets.token_hex(8)}"
