"""Keep slice_connect's secrets out of Sentry events.

sentry-sdk sends the local variables of every frame of a stack trace by default
(``include_local_variables=True``), and Django's ``sensitive_variables`` masking reaches
only Django's own error reports, never Sentry. A renewal that fails, a code exchange whose
answer cannot be stored, or an API call that breaks would send the refresh token, the
access token, the client secret, the authorization code, the state or the PKCE verifier
from the frames of slice_connect and of the HTTP stack below them. Plug these hooks into
``sentry_sdk.init``::

    import sentry_sdk
    from slice_connect.contrib import sentry as slice_sentry

    sentry_sdk.init(
        dsn=...,
        before_send=slice_sentry.before_send,
        before_send_transaction=slice_sentry.before_send_transaction,
        before_breadcrumb=slice_sentry.before_breadcrumb,
    )

What they remove from every event, transaction and breadcrumb:

* the local variables of every slice_connect frame **and of every frame below it** (the
  HTTP stack, the ORM, signal receivers it called): those frames hold the tokens, the
  request bodies sent to the token endpoint and the ``Authorization`` header. In an event
  that shows a slice_connect frame, the HTTP stack's frames (requests, urllib3,
  http.client, ssl, socket, oauthlib) lose their locals wherever they are, chained
  exceptions included. Function
  names, file names, line numbers and source lines stay, and so do the locals of your own
  frames above ours, so the event still tells what failed and where;
* the value of any mapping key, form field, query parameter or JSON member named
  ``access_token``, ``refresh_token``, ``id_token``, ``token``, ``client_secret``,
  ``code``, ``state`` or ``code_verifier``, and of ``Authorization`` headers, wherever it
  appears (the callback's query string, request data, breadcrumbs, span data, other
  frames' locals, exception messages). Note that this also hides ``code`` and ``state``
  parameters of your own URLs;
* ``Bearer`` tokens and ``Authorization:`` header values in any text;
* the configured ``CLIENT_SECRET`` wherever it appears, as it is or URL-encoded (also in
  the source lines shown around each frame, which are otherwise left as they are).

This module does not import ``sentry_sdk``: install the ``sentry`` extra
(``pip install django-slice-connect[sentry]``) for sentry-sdk itself. The hooks expect
sentry-sdk 2.x, which hands ``before_send`` an event that is already serialized (plain
dicts, lists and strings).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = [
    "FILTERED",
    "SECRET_KEYS",
    "before_breadcrumb",
    "before_send",
    "before_send_transaction",
    "scrub",
    "scrub_event",
    "scrub_text",
]

FILTERED = "[Filtered]"

#: Names whose values are secrets wherever they appear (compared lower-case, ``-`` as
#: ``_``, a WSGI ``HTTP_`` prefix removed).
SECRET_PARAMETERS = (
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "client_secret",
    "code",
    "state",
    "code_verifier",
)
SECRET_KEYS = frozenset({*SECRET_PARAMETERS, "authorization", "proxy_authorization"})

_NAMES = "|".join(SECRET_PARAMETERS)
#: ``name=value`` in a query string or a form body (not inside a longer name).
_PARAMETER = re.compile(rf"(?i)(?<![\w.%-])((?:{_NAMES})=)([^&\s'\"#;,]+)")
#: ``"name": "value"`` in JSON or a Python ``repr``.
_MEMBER = re.compile(rf"(?i)([\"'](?:{_NAMES})[\"']\s*:\s*)([\"'])((?:\\.|(?!\2).)*)\2")
#: A bearer token (RFC 6750 ``b64token``, 8 characters or more, so that prose such as "the
#: bearer of" stays) in a header value, a header block or a ``repr``.
_CREDENTIALS = re.compile(r"(?i)\b(bearer)(\s+)([A-Za-z0-9\-._~+/]{8,}=*)")
#: ``Authorization: ...`` up to the end of the line (a raw or ``repr``-escaped one).
_AUTHORIZATION = re.compile(r"(?i)((?:proxy-)?authorization\s*:\s*)((?:(?!\\r|\\n)[^\r\n'\"])+)")

#: Source lines around a frame: code, not data (only a literal secret is filtered there).
SOURCE_KEYS = frozenset({"pre_context", "context_line", "post_context"})

#: Deeper than any serialized event: containers below this depth are replaced whole.
MAX_DEPTH = 64

#: Frames of these modules (and every frame they called) lose their local variables.
OUR_PACKAGE = "slice_connect"

#: The HTTP stack under our calls. In an event that shows any slice_connect frame, these
#: frames lose their locals wherever they appear, e.g. in a chained exception (``raise ...
#: from``, or one raised while handling another) whose own trace starts below our frames.
HTTP_STACK = (
    "requests",
    "urllib3",
    "http.client",
    "ssl",
    "socket",
    "oauthlib",
    "requests_oauthlib",
)


def _normalized(key: str) -> str:
    name = key.lower().replace("-", "_")
    return name[5:] if name.startswith("http_") else name


def _literal_secrets() -> list[str]:
    """The configured client secret, as it is and URL-encoded (longest first)."""
    try:
        from slice_connect.conf import app_settings

        secret = app_settings.CLIENT_SECRET
    except Exception:  # settings not configured, or malformed: nothing to add
        return []
    if not isinstance(secret, str) or len(secret) < 6:
        return []
    return sorted({secret, quote(secret, safe=""), quote_plus(secret)}, key=len, reverse=True)


def _replace_literals(value: Any, literals: list[str]) -> Any:
    if isinstance(value, str):
        for literal in literals:
            value = value.replace(literal, FILTERED)
        return value
    if isinstance(value, list):
        return [_replace_literals(item, literals) for item in value]
    return value


def scrub_text(text: str, literals: list[str] | None = None) -> str:
    """``text`` with secret parameters, members, credentials and literals filtered."""
    for literal in _literal_secrets() if literals is None else literals:
        if literal in text:
            text = text.replace(literal, FILTERED)
    text = _PARAMETER.sub(lambda m: m.group(1) + FILTERED, text)
    text = _MEMBER.sub(lambda m: f"{m.group(1)}{m.group(2)}{FILTERED}{m.group(2)}", text)
    text = _AUTHORIZATION.sub(lambda m: m.group(1) + FILTERED, text)
    return _CREDENTIALS.sub(lambda m: m.group(1) + m.group(2) + FILTERED, text)


def _is_ours(frame: Any) -> bool:
    if not isinstance(frame, dict):
        return False
    module = frame.get("module")
    if isinstance(module, str) and module:
        return module == OUR_PACKAGE or module.startswith(OUR_PACKAGE + ".")
    path = frame.get("abs_path") or frame.get("filename") or ""
    return isinstance(path, str) and f"/{OUR_PACKAGE}/" in path.replace("\\", "/")


def _scrub_frames(frames: list[Any]) -> None:
    """Drop the locals of the first slice_connect frame and of every frame after it.

    Sentry orders frames from the outermost call to the innermost one, so the frames after
    ours are those our code called: the HTTP stack, the ORM, receivers.
    """
    first = next((i for i, frame in enumerate(frames) if _is_ours(frame)), None)
    if first is None:
        return
    for frame in frames[first:]:
        if isinstance(frame, dict):
            frame.pop("vars", None)


def scrub(value: Any, literals: list[str] | None = None) -> Any:
    """Return ``value`` (a dict, list or string; changed in place where possible) scrubbed.

    Other objects are returned as they are.
    """
    if literals is None:
        literals = _literal_secrets()
    return _scrub(value, literals, 0, set())


def _scrub(value: Any, literals: list[str], depth: int, seen: set[int]) -> Any:
    """Text is scrubbed, containers are walked, any other object is kept as it is."""
    if isinstance(value, str):
        return scrub_text(value, literals)
    if isinstance(value, (bytes, bytearray)):
        return scrub_text(bytes(value).decode("utf-8", "replace"), literals)
    if isinstance(value, (dict, list, tuple)):
        return _scrub_container(value, literals, depth, seen)
    return value


def _scrub_container(
    value: dict[Any, Any] | list[Any] | tuple[Any, ...],
    literals: list[str],
    depth: int,
    seen: set[int],
) -> Any:
    """A dict or a list is scrubbed in place, a tuple is rebuilt; each item one level down."""
    if depth > MAX_DEPTH:
        return FILTERED
    if id(value) in seen:  # a cycle (raw breadcrumb data): already being scrubbed
        return value
    seen.add(id(value))
    if isinstance(value, tuple):
        return tuple(_scrub(item, literals, depth + 1, seen) for item in value)
    if isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _scrub(item, literals, depth + 1, seen)
        return value
    return _scrub_mapping(value, literals, depth + 1, seen)


def _scrub_mapping(
    mapping: dict[Any, Any], literals: list[str], depth: int, seen: set[int]
) -> dict[Any, Any]:
    """A stack trace's frames lose their locals first, then each member is scrubbed."""
    frames = mapping.get("frames")
    if isinstance(frames, list):
        _scrub_frames(frames)
    for key in list(mapping):
        mapping[key] = _scrub_member(key, mapping[key], literals, depth, seen)
    return mapping


def _scrub_member(key: Any, value: Any, literals: list[str], depth: int, seen: set[int]) -> Any:
    """The value of ``mapping[key]``, scrubbed according to the key."""
    if key == "_meta":  # sentry's own annotations: lengths and remarks, no data
        return value
    if isinstance(key, str) and _normalized(key) in SECRET_KEYS:
        return value if value in (None, "") else FILTERED
    if key in SOURCE_KEYS:  # source lines: code, so only a literal secret goes
        return _replace_literals(value, literals)
    return _scrub(value, literals, depth, seen)


def _stacktraces(event: dict[str, Any]) -> list[list[Any]]:
    """The frame lists of an event: its exceptions (chained ones too), threads, stack."""
    found: list[list[Any]] = []
    holders: list[Any] = [event]
    for section in ("exception", "threads"):
        values = event.get(section)
        if isinstance(values, dict):
            values = values.get("values")
        if isinstance(values, list):
            holders += values
    for holder in holders:
        if not isinstance(holder, dict):
            continue
        stacktrace = holder.get("stacktrace")
        frames = stacktrace.get("frames") if isinstance(stacktrace, dict) else None
        if isinstance(frames, list):
            found.append(frames)
    return found


def _in_http_stack(frame: Any) -> bool:
    module = frame.get("module") if isinstance(frame, dict) else None
    return isinstance(module, str) and any(
        module == name or module.startswith(name + ".") for name in HTTP_STACK
    )


def scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """Scrub a serialized Sentry event (an error or a transaction) in place; return it."""
    stacktraces = _stacktraces(event)
    if any(_is_ours(frame) for frames in stacktraces for frame in frames):
        for frames in stacktraces:
            for frame in frames:
                if _in_http_stack(frame):
                    frame.pop("vars", None)
    scrub(event)
    return event


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """``sentry_sdk.init(before_send=...)``: scrub every error event."""
    return scrub_event(event)


def before_send_transaction(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """``sentry_sdk.init(before_send_transaction=...)``: scrub every transaction.

    Transactions carry the request (the callback's query string holds the code and the
    state) and span data.
    """
    return scrub_event(event)


def before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """``sentry_sdk.init(before_breadcrumb=...)``: scrub every breadcrumb when recorded.

    Breadcrumbs are scrubbed again with the event that carries them; scrubbing them here
    as well keeps secrets out of any other hook that reads them.
    """
    scrub(crumb)
    return crumb
