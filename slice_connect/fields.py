"""The encrypted token field: django-fernet-fields-v2, made live and fail-closed."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.utils.encoding import force_bytes, force_str
from fernet_fields import EncryptedTextField, hkdf


class UnreadableToken:
    """Stands in for a token whose ciphertext could not be decrypted.

    It is not a string, so it can never be sent to Slice by mistake, and the field refuses
    to save it, so an undecryptable row is never overwritten with garbage.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unreadable token>"

    def __bool__(self) -> bool:
        return False


UNREADABLE = UnreadableToken()


def configured_keys() -> tuple[str, ...]:
    """Return ``FERNET_KEYS`` (newest first), or ``SECRET_KEY`` when it is unset."""
    keys = getattr(settings, "FERNET_KEYS", None)
    if not keys:
        return (settings.SECRET_KEY,)
    return tuple(keys)


@lru_cache(maxsize=8)
def _fernet_for(keys: tuple[str, ...], use_hkdf: bool) -> MultiFernet:
    derived = [hkdf.derive_fernet_key(k) if use_hkdf else force_bytes(k) for k in keys]
    return MultiFernet([Fernet(k) for k in derived])


def current_fernet() -> MultiFernet:
    """The MultiFernet for the keys configured right now (cached per key list)."""
    return _fernet_for(configured_keys(), bool(getattr(settings, "FERNET_USE_HKDF", True)))


def primary_fernet() -> MultiFernet:
    """A MultiFernet holding only the newest key: decrypts only rows already rotated."""
    return _fernet_for(configured_keys()[:1], bool(getattr(settings, "FERNET_USE_HKDF", True)))


class EncryptedTokenField(EncryptedTextField):
    """A Fernet-encrypted text column for OAuth tokens.

    Unlike the upstream field it reads ``FERNET_KEYS`` on every use (key rotation and
    ``override_settings`` take effect at once) and, when a value cannot be decrypted, yields
    :data:`UNREADABLE` instead of raising (so admin pages still load) or passing the
    ciphertext through (so it is never mistaken for a token).
    """

    @property  # type: ignore[override]
    def fernet(self) -> MultiFernet:
        return current_fernet()

    def from_db_value(self, value: Any, expression: Any, connection: Any, *args: Any) -> Any:
        if value is None:
            return None
        try:
            return force_str(current_fernet().decrypt(bytes(value)))
        except (InvalidToken, TypeError, ValueError):
            return UNREADABLE

    def get_db_prep_save(self, value: Any, connection: Any) -> Any:
        if isinstance(value, UnreadableToken):
            raise ValueError("Refusing to save an undecryptable token over its ciphertext.")
        if hasattr(value, "as_sql"):
            # Upstream would store the encrypted repr of the expression ("Value('...')") as
            # the token; raw bytes are written with SQL (slice_connect_rotate_keys).
            raise TypeError("Encrypted token columns take plain values, not SQL expressions.")
        return super().get_db_prep_save(value, connection)
