"""Signals sent by slice_connect, always with ``sender=SliceCredential``, after commit."""

from __future__ import annotations

from django.dispatch import Signal

#: A user linked (or re-linked) their Slice account.
#: kwargs: ``credential``, ``user``, ``created`` (False on a re-link), ``request`` (or None).
credential_linked = Signal()

#: A credential was deleted: by unlink, the admin, or deleting its user.
#: kwargs: ``credential`` (no longer in the database), ``user``, ``request`` (or None).
credential_unlinked = Signal()

#: A credential's tokens were renewed.
#: kwargs: ``credential``.
credential_renewed = Signal()

#: A renewal failed.
#: kwargs: ``credential``, ``error`` (a SliceConnectError), ``permanent`` (True when the
#: credential now needs the user to link again).
credential_renewal_failed = Signal()
