"""Checking bcrypt password hashes (``$2a$``, ``$2b$``, ``$2y$``), as exporter-toolkit's
``basic_auth_users`` holds them, without a new required dependency.

Two backends, the first that proves it works:

* the system's libcrypt (libxcrypt on Debian, Ubuntu, Fedora, RHEL 8+; musl's libc on Alpine),
  called through ctypes. Python's own ``crypt`` module wraps the same function but is deprecated
  and gone in Python 3.13, so it is called directly.
* the ``bcrypt`` package (``pip install 'training-exporter[auth]'``), where libcrypt cannot do
  bcrypt (macOS, old glibc-only systems).

Each backend is tried on a known answer before it is trusted: a libcrypt without bcrypt support
returns a failure token or a DES hash rather than an error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import hmac
import re
import threading
from typing import Callable

BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")

# A published crypt_blowfish test vector: "U*U" at cost 5.
_KNOWN_HASH = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
_KNOWN_PASSWORD = b"U*U"
# glibc's struct crypt_data is 131232 bytes, libxcrypt's 32768: room for either.
_CRYPT_DATA_SIZE = 1 << 18

HashFunction = Callable[[bytes, str], "str | None"]  # (password, stored hash) -> computed hash


class BcryptUnavailable(Exception):
    """Neither libcrypt nor the bcrypt package can check bcrypt hashes here."""


def _libcrypt_backend() -> HashFunction | None:
    for name in ("crypt", "c"):  # libxcrypt, or musl where crypt lives in libc
        path = ctypes.util.find_library(name)
        if not path:
            continue
        try:
            library = ctypes.CDLL(path)
            crypt_r = library.crypt_r
        except (OSError, AttributeError):
            continue
        crypt_r.restype = ctypes.c_char_p
        crypt_r.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

        def compute(password: bytes, stored: str, _crypt_r=crypt_r) -> str | None:
            # A fresh zeroed buffer per call: crypt_r is thread-safe only with its own data.
            # ctypes releases the GIL for the call, so other requests are served meanwhile.
            data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
            result = _crypt_r(password, stored.encode("ascii"), data)
            return result.decode("ascii", "replace") if result else None

        if _works(compute):
            return compute
    return None


def _bcrypt_package_backend() -> HashFunction | None:
    try:
        import bcrypt
    except ImportError:
        return None

    def compute(password: bytes, stored: str) -> str | None:
        try:
            return bcrypt.hashpw(password, stored.encode("ascii")).decode("ascii")
        except ValueError:
            return None

    return compute if _works(compute) else None


def _works(compute: HashFunction) -> bool:
    try:
        return compute(_KNOWN_PASSWORD, _KNOWN_HASH) == _KNOWN_HASH
    except Exception:  # noqa: BLE001 - any failure means "not this backend"
        return False


BACKENDS: dict[str, Callable[[], HashFunction | None]] = {
    "libcrypt": _libcrypt_backend,
    "bcrypt": _bcrypt_package_backend,
}
_found: tuple[str, HashFunction] | None = None
_found_lock = threading.Lock()


def backend() -> tuple[str, HashFunction]:
    """The first backend that passes its known-answer test, as (name, function)."""
    global _found
    with _found_lock:
        if _found is None:
            for name, make in BACKENDS.items():
                compute = make()
                if compute is not None:
                    _found = (name, compute)
                    break
            else:
                raise BcryptUnavailable(
                    "basic_auth_users needs bcrypt, which this system's libcrypt lacks: "
                    "pip install 'training-exporter[auth]'")
        return _found


class PasswordChecker:
    """Checks user and password against bcrypt hashes.

    bcrypt is slow on purpose (tens of milliseconds at the usual cost 10-12), so a success is
    remembered: a scraper sending the same credentials every 15 s pays once. Only successes are
    remembered, keyed by a digest of user, hash and password, so nothing usable is kept in
    memory in the clear and a changed hash is checked afresh. Slow checks run one at a time, so a
    flood of wrong passwords costs at most one core.
    """

    MAX_CACHED = 256

    def __init__(self, users: dict[str, str], compute: HashFunction | None = None) -> None:
        self.users = dict(users)
        self._compute = compute or backend()[1]
        self._cache: set[bytes] = set()
        self._slow_lock = threading.Lock()
        # Unknown users are checked against this, at the highest cost any user has, so that
        # their answer takes as long as a wrong password's and does not tell which names exist.
        cost = max((stored[4:6] for stored in self.users.values() if BCRYPT_HASH.match(stored)), default="10")
        self._decoy = f"$2b${cost}$" + "C" * 53

    def check(self, user: str, password: str) -> bool:
        stored = self.users.get(user)
        known = stored is not None
        stored = stored if known else self._decoy
        secret = password.encode("utf-8", "surrogateescape")
        if b"\0" in secret:
            # C strings end at NUL: "right\0anything" must not pass as "right".
            return False
        key = hashlib.sha256(repr((user, stored, secret)).encode()).digest()  # repr: unambiguous
        if known and key in self._cache:
            return True
        with self._slow_lock:
            computed = self._compute(secret, stored)
        ok = known and computed is not None and hmac.compare_digest(computed.encode(), stored.encode())
        if ok:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()  # bounded: many distinct good credentials are unusual
            self._cache.add(key)
        return ok
