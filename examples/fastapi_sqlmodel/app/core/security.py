"""Password hashing. The template uses pwdlib (argon2, bcrypt); this example keeps to the
standard library's scrypt so that it needs nothing more."""

from __future__ import annotations

import hashlib
import hmac
import secrets

_N, _R, _P = 2**14, 8, 1


def get_password_hash(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, hashed: str) -> bool:
    _, n, r, p, salt, digest = hashed.split("$")
    given = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p)
    )
    return hmac.compare_digest(given.hex(), digest)
