"""The encrypted token field: django-fernet-fields-v2, made live and fail-closed."""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models
from django.utils.encoding import force_str
from fernet_fields import EncryptedTextField, hkdf

#: Shortest ``FERNET_KEYS`` entry accepted when keys are derived with HKDF (the default).
MIN_KEY_LENGTH = 32

#: How ``dumpdata`` writes a token column: the stored Fernet ciphertext behind a marker that
#: no token starts with, so a dump never holds a plaintext token and ``loaddata`` restores
#: the stored bytes exactly. Bytes that are not Fernet's base64 text (a corrupted row) are
#: written base64-encoded behind the second marker.
DUMP_PREFIX = "!fernet:"
DUMP_PREFIX_BASE64 = "!fernet-base64:"

_FERNET_TEXT = re.compile(rb"[A-Za-z0-9_\-]+=*")


class KeysUnusable(ImproperlyConfigured):
    """``FERNET_KEYS`` cannot be turned into Fernet keys (this process's configuration)."""


class UnreadableToken:
    """Stands in for a token whose ciphertext could not be decrypted.

    It is not a string, so it can never be sent to Slice by mistake, and the field refuses
    to save it, so an undecryptable row is never overwritten with garbage. It keeps the
    stored bytes only so that ``dumpdata`` can write them out unchanged; they never show
    in its ``repr``.
    """

    __slots__ = ("_ciphertext",)

    def __init__(self, ciphertext: bytes | None = None) -> None:
        self._ciphertext = ciphertext

    def __repr__(self) -> str:
        return "<unreadable token>"

    def __bool__(self) -> bool:
        return False


#: An unreadable token with no stored bytes attached.
UNREADABLE = UnreadableToken()


class DecryptedToken(str):
    """A token read from the database; remembers the ciphertext it was read from.

    It is the token (a ``str``) in every respect; ``dumpdata`` writes the remembered
    ciphertext instead of the token. Assigning a new value replaces it with a plain
    ``str``, which is encrypted afresh when dumped or saved.
    """

    ciphertext: bytes


class StoredCiphertext:
    """Ciphertext restored from a dump, written back to the column byte for byte.

    Not a ``str``: it is never a token and is never decrypted on its way in.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def __repr__(self) -> str:
        return "<stored ciphertext>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredCiphertext) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)


# -- the keys ----------------------------------------------------------------------------


def use_hkdf() -> bool:
    return bool(getattr(settings, "FERNET_USE_HKDF", True))


def is_fernet_key(key: str) -> bool:
    """Whether ``key`` is a raw Fernet key (urlsafe base64 of 32 bytes)."""
    try:
        return len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32 and len(key) == 44
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def key_problems(keys: Any) -> list[tuple[str, int | None]]:
    """Every problem of a ``FERNET_KEYS`` value, as ``(kind, index)``; never the key itself.

    Kinds: ``"type"`` (not a list or tuple of strings; ``index`` names the entry, or is
    ``None`` for the whole value), ``"blank"``, ``"secret_key"`` (equals ``SECRET_KEY`` or
    one of ``SECRET_KEY_FALLBACKS``) and ``"short"`` (under :data:`MIN_KEY_LENGTH`
    characters, or not a Fernet key when ``FERNET_USE_HKDF`` is ``False``). An unset or
    empty value is not a problem here (it falls back to ``SECRET_KEY``: check E003).
    """
    if not keys:
        return []
    if not isinstance(keys, (list, tuple)):
        return [("type", None)]
    try:
        secrets_in_use = {settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())}
    except ImproperlyConfigured:
        secrets_in_use = set(getattr(settings, "SECRET_KEY_FALLBACKS", ()))
    hkdf_on = use_hkdf()
    return [
        (kind, index)
        for index, key in enumerate(keys)
        for kind in _key_problems(key, secrets_in_use, hkdf_on=hkdf_on)
    ]


def _key_problems(key: Any, secrets_in_use: set[Any], *, hkdf_on: bool) -> list[str]:
    """The kinds of problem of one ``FERNET_KEYS`` entry (see :func:`key_problems`)."""
    if key is None or (isinstance(key, (str, bytes)) and not key.strip()):
        return ["blank"]
    if not isinstance(key, str):
        return ["type"]
    kinds = ["secret_key"] if key in secrets_in_use else []
    if (len(key) < MIN_KEY_LENGTH) if hkdf_on else not is_fernet_key(key):
        kinds.append("short")
    return kinds


def configured_keys() -> tuple[str, ...]:
    """Return ``FERNET_KEYS`` (newest first), or ``SECRET_KEY`` when it is unset.

    Raises :class:`KeysUnusable` when the value cannot be keys at all (a plain string,
    which would otherwise become one key per character, or an entry that is not a
    non-blank string).
    """
    keys = getattr(settings, "FERNET_KEYS", None)
    if not keys:
        return (settings.SECRET_KEY,)
    if not isinstance(keys, (list, tuple)):
        raise KeysUnusable(
            f"FERNET_KEYS must be a list or tuple of strings, not {type(keys).__name__}."
        )
    for index, key in enumerate(keys):
        if not isinstance(key, str) or not key.strip():
            raise KeysUnusable(f"FERNET_KEYS[{index}] is not a non-blank string.")
    return tuple(keys)


@lru_cache(maxsize=8)
def _fernet_for(keys: tuple[str, ...], hkdf_on: bool) -> MultiFernet:
    try:
        derived = [hkdf.derive_fernet_key(k) if hkdf_on else k.encode() for k in keys]
        return MultiFernet([Fernet(k) for k in derived])
    except (TypeError, ValueError, binascii.Error):
        # Fernet's own message is generic and names no key; keep it that way.
        raise KeysUnusable(
            "FERNET_KEYS holds a value that is not a Fernet key (FERNET_USE_HKDF is False)."
        ) from None


def current_fernet() -> MultiFernet:
    """The MultiFernet for the keys configured right now (cached per key list).

    Raises :class:`KeysUnusable` when the keys cannot be built.
    """
    return _fernet_for(configured_keys(), use_hkdf())


def primary_fernet() -> MultiFernet:
    """A MultiFernet holding only the newest key: decrypts only rows already rotated."""
    return _fernet_for(configured_keys()[:1], use_hkdf())


def keys_unusable() -> str | None:
    """Why this process cannot build its Fernet keys, or ``None`` when it can."""
    try:
        current_fernet()
    except KeysUnusable as exc:
        return str(exc)
    return None


def well_formed(token: bytes) -> bool:
    """Whether ``token`` has the shape of a Fernet token (whatever key made it).

    A value that fails this is corrupted, whichever keys are configured; one that passes
    but does not decrypt was made with another key or had bits flipped.
    """
    if not _FERNET_TEXT.fullmatch(token):
        return False
    try:
        data = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        return False
    # version (1) + timestamp (8) + IV (16) + at least one AES block (16) + HMAC (32)
    return len(data) >= 73 and data[0] == 0x80 and (len(data) - 57) % 16 == 0


def decrypts(fernet: MultiFernet, token: bytes) -> bool:
    try:
        fernet.decrypt(token)
    except (InvalidToken, TypeError, ValueError):
        return False
    return True


def stored_bytes(value: Any) -> bytes | None:
    """The ciphertext a token value was read from (or restored as), if it is known."""
    if isinstance(value, DecryptedToken):
        return value.ciphertext
    if isinstance(value, UnreadableToken):
        return value._ciphertext
    if isinstance(value, StoredCiphertext):
        return value.data
    return None


def dump_text(data: bytes) -> str:
    """How ``dumpdata`` writes stored ciphertext (see :data:`DUMP_PREFIX`)."""
    if _FERNET_TEXT.fullmatch(data):
        return DUMP_PREFIX + data.decode("ascii")
    return DUMP_PREFIX_BASE64 + base64.b64encode(data).decode("ascii")


def parse_dump_text(value: str) -> StoredCiphertext | None:
    """The ciphertext of a dumped token column, or ``None`` when ``value`` is not one."""
    if value.startswith(DUMP_PREFIX_BASE64):
        try:
            data = base64.b64decode(value[len(DUMP_PREFIX_BASE64) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError(
                "A dumped token column is not valid base64.", code="invalid"
            ) from None
        return StoredCiphertext(data)
    if value.startswith(DUMP_PREFIX):
        data = value[len(DUMP_PREFIX) :].encode("ascii", "replace")
        if not _FERNET_TEXT.fullmatch(data):
            raise ValidationError("A dumped token column is not Fernet text.", code="invalid")
        return StoredCiphertext(data)
    return None


if TYPE_CHECKING:
    # django-fernet-fields-v2 ships no types; its EncryptedTextField is a TextField that
    # encrypts. What this field takes and gives, for django-stubs.
    _TokenColumn = models.TextField[
        str | StoredCiphertext | None, str | UnreadableToken | StoredCiphertext | None
    ]
else:
    _TokenColumn = EncryptedTextField


class EncryptedTokenField(_TokenColumn):
    """A Fernet-encrypted text column for OAuth tokens.

    Unlike the upstream field it reads ``FERNET_KEYS`` on every use (key rotation and
    ``override_settings`` take effect at once) and, when a value cannot be decrypted, yields
    an :class:`UnreadableToken` instead of raising (so admin pages still load) or passing the
    ciphertext through (so it is never mistaken for a token). Serialization (``dumpdata``)
    writes the stored ciphertext, never the token, and ``loaddata`` writes it back as is.
    """

    @property
    def fernet(self) -> MultiFernet:
        return current_fernet()

    def from_db_value(self, value: Any, expression: Any, connection: Any, *args: Any) -> Any:
        if value is None:
            return None
        raw = bytes(value)
        try:
            plain = force_str(current_fernet().decrypt(raw))
        except (KeysUnusable, InvalidToken, TypeError, ValueError):
            return UnreadableToken(raw)
        token = DecryptedToken(plain)
        token.ciphertext = raw
        return token

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and not isinstance(value, DecryptedToken):
            restored = parse_dump_text(value)
            if restored is not None:
                return restored
        return value

    def get_db_prep_save(self, value: Any, connection: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, UnreadableToken):
            raise ValueError("Refusing to save an undecryptable token over its ciphertext.")
        if hasattr(value, "as_sql"):
            # Upstream would store the encrypted repr of the expression ("Value('...')") as
            # the token; raw bytes are written with SQL (slice_connect_rotate_keys).
            raise TypeError("Encrypted token columns take plain values, not SQL expressions.")
        if isinstance(value, StoredCiphertext):
            return connection.Database.Binary(value.data)
        if not isinstance(value, str):
            # Upstream would encrypt whatever it is given: stored bytes assigned back would
            # become a "token" made of ciphertext.
            raise TypeError(
                f"Encrypted token columns take a str token, not {type(value).__name__}."
            )
        return connection.Database.Binary(current_fernet().encrypt(value.encode()))

    def value_to_string(self, obj: Any) -> Any:
        """The stored ciphertext behind :data:`DUMP_PREFIX` (never the token)."""
        value = self.value_from_object(obj)
        if value is None:
            return None
        data = stored_bytes(value)
        if data is None:
            if not isinstance(value, str):
                raise ValueError("An unreadable token without its stored bytes cannot be dumped.")
            data = current_fernet().encrypt(value.encode())
        return dump_text(data)
