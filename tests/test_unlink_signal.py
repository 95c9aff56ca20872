"""``credential_unlinked`` gets the request of :func:`services.unlink`, and only that one.

The request travels as an argument of the call (bound to the credential being deleted for
the duration of the delete), never as an attribute on the instance. Every other way of
deleting a row (deleting the user, ``QuerySet.delete()``) revokes and signals with
``request=None``. Rule R37 (see docs/threat-model.rst).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
from django.db.models.signals import pre_delete
from django.test import RequestFactory

from slice_connect import services, signals
from slice_connect.models import SliceCredential
from tests.conftest import REVOKE_URL

MakeCredential = Callable[..., SliceCredential]


@pytest.fixture
def unlinked() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        kwargs.pop("signal", None)
        seen.append(kwargs)

    signals.credential_unlinked.connect(receiver, weak=False)
    yield seen
    signals.credential_unlinked.disconnect(receiver)


@pytest.fixture
def revocations(slice_mock: responses.RequestsMock) -> Callable[[], list[str]]:
    slice_mock.post(REVOKE_URL, status=200)

    def tokens() -> list[str]:
        return [parse_qs(c.request.body)["token"][0] for c in slice_mock.calls]

    return tokens


def test_unlink_passes_its_request(
    user: Any,
    make_credential: MakeCredential,
    unlinked: list[dict[str, Any]],
    revocations: Callable[[], list[str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    credential = make_credential(user)
    refresh = credential.refresh_token
    request = RequestFactory().post("/slice/unlink/")
    with django_capture_on_commit_callbacks(execute=True):
        services.unlink(credential, request=request)
    assert [event["request"] for event in unlinked] == [request]
    assert unlinked[0]["user"] == user
    assert revocations() == [refresh]
    # Nothing was left on the instance, and the request is not bound any more.
    assert not [name for name in vars(credential) if "request" in name]
    assert services._UNLINKING.get() is None


@pytest.mark.parametrize("how", ["user", "queryset", "instance"])
def test_other_deletions_signal_without_a_request(
    how: str,
    user: Any,
    make_credential: MakeCredential,
    unlinked: list[dict[str, Any]],
    revocations: Callable[[], list[str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    credential = make_credential(user)
    refresh = credential.refresh_token
    with django_capture_on_commit_callbacks(execute=True):
        if how == "user":
            user.delete()
        elif how == "queryset":
            SliceCredential.objects.filter(pk=credential.pk).delete()
        else:
            credential.delete()
    assert not SliceCredential.objects.exists()
    assert len(unlinked) == 1 and unlinked[0]["request"] is None
    assert revocations() == [refresh]


def test_request_is_bound_to_the_credential_being_unlinked(
    make_user: Callable[..., Any],
    make_credential: MakeCredential,
    unlinked: list[dict[str, Any]],
    revocations: Callable[[], list[str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    """A receiver that deletes another credential during unlink() does not pass it on."""
    alice, bob = make_user("alice"), make_user("bob")
    first, second = make_credential(alice), make_credential(bob)
    request = RequestFactory().post("/slice/unlink/")

    def delete_bob_too(sender: Any, instance: SliceCredential, **kwargs: Any) -> None:
        if instance.pk == first.pk:
            SliceCredential.objects.filter(pk=second.pk).delete()

    pre_delete.connect(delete_bob_too, sender=SliceCredential, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            services.unlink(first, request=request)
    finally:
        pre_delete.disconnect(delete_bob_too, sender=SliceCredential)
    by_user = {event["user"].username: event["request"] for event in unlinked}
    assert by_user == {"alice": request, "bob": None}
    assert sorted(revocations()) == sorted([first.refresh_token, second.refresh_token])


def test_unlink_user(
    user: Any,
    make_credential: MakeCredential,
    unlinked: list[dict[str, Any]],
    revocations: Callable[[], list[str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    request = RequestFactory().post("/slice/api/unlink")
    assert services.unlink_user(user, request=request) is False
    refresh = make_credential(user).refresh_token
    with django_capture_on_commit_callbacks(execute=True):
        assert services.unlink_user(user, request=request) is True
    assert not SliceCredential.objects.exists()
    assert [event["request"] for event in unlinked] == [request]
    assert revocations() == [refresh]
