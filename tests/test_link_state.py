"""Link state in templates and code: ``{% slice_connect_control %}``, the filters, helpers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.middleware.csrf import get_token
from django.template import Context, RequestContext, Template
from django.test import Client, RequestFactory

from slice_connect import services
from slice_connect.models import SliceCredential

pytestmark = pytest.mark.django_db

CONTROL = Template("{% load slice_connect %}{% slice_connect_control %}")


def render(template: Template, user: Any, path: str = "/account/?tab=1") -> str:
    request = RequestFactory().get(path)
    request.user = user
    get_token(request)  # what CsrfViewMiddleware does for a page with a form
    return template.render(RequestContext(request, {}))


def forms(html: str) -> list[tuple[str, str]]:
    """(action, button text) of every form in ``html``; each must carry a CSRF token."""
    found = []
    for form in re.findall(r"<form\b.*?</form>", html, re.S):
        assert 'method="post"' in form
        assert 'name="csrfmiddlewaretoken"' in form
        action = re.search(r'action="([^"]*)"', form)
        button = re.search(r"<button[^>]*>(.*?)</button>", form, re.S)
        assert action and button
        found.append((action.group(1), button.group(1).strip()))
    return found


def test_anonymous_gets_nothing() -> None:
    assert render(CONTROL, AnonymousUser()).strip() == ""


def test_unlinked_user_gets_connect(user: Any) -> None:
    html = render(CONTROL, user)
    assert forms(html) == [("/slice/authorize/", "Connect Slice")]
    assert "Your Slice account is not linked." in html
    assert 'name="next" value="/account/?tab=1"' in html


def test_active_link_gets_unlink(user: Any, make_credential: Callable[..., Any]) -> None:
    make_credential(user)
    html = render(CONTROL, user)
    assert forms(html) == [("/slice/unlink/", "Unlink Slice")]
    assert "Your Slice account is linked." in html


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (SliceCredential.Reason.INVALID_GRANT, "Slice refused the refresh token"),
        (SliceCredential.Reason.REFRESH_EXPIRED, "the refresh token expired"),
        (SliceCredential.Reason.LOST_ROTATION, "a rotated refresh token was lost in transit"),
        (SliceCredential.Reason.UNDECRYPTABLE, "the stored tokens cannot be decrypted"),
    ],
)
def test_needs_reauth_gets_reconnect_with_the_reason_in_words(
    user: Any, make_credential: Callable[..., Any], reason: str, words: str
) -> None:
    make_credential(user, status=SliceCredential.Status.NEEDS_REAUTH, status_reason=reason)
    html = render(CONTROL, user)
    assert forms(html) == [
        ("/slice/authorize/", "Reconnect Slice"),
        ("/slice/unlink/", "Unlink Slice"),
    ]
    assert f"Your Slice link stopped working: {words}. Reconnect to repair it." in html
    assert f"{reason}<" not in html and f"({reason})" not in html  # never the raw value


def test_needs_reauth_without_a_reason(user: Any, make_credential: Callable[..., Any]) -> None:
    make_credential(user, status=SliceCredential.Status.NEEDS_REAUTH)
    html = render(CONTROL, user)
    assert "Your Slice link stopped working. Reconnect to repair it." in html


def test_next_can_be_given(user: Any) -> None:
    html = render(Template('{% load slice_connect %}{% slice_connect_control next="/x/" %}'), user)
    assert 'name="next" value="/x/"' in html


def test_next_is_escaped(user: Any) -> None:
    html = render(CONTROL, user, path='/a/?q="><script>')
    assert "<script>" not in html


def test_works_with_only_user_in_the_context(user: Any) -> None:
    # No request (e.g. a template rendered outside a view): no next, forms still render.
    html = CONTROL.render(Context({"user": user}))
    assert 'action="/slice/authorize/"' in html
    assert 'name="next"' not in html


def test_filters(user: Any, make_user: Callable[..., Any], make_credential: Any) -> None:
    template = Template(
        "{% load slice_connect %}{{ user|slice_linked }}|"
        "{% with c=user|slice_credential %}{{ c.get_status_display|default:'-' }}{% endwith %}"
    )
    assert template.render(Context({"user": AnonymousUser()})) == "False|-"
    assert template.render(Context({"user": user})) == "False|-"
    linked = make_user("linked")
    make_credential(linked)
    assert template.render(Context({"user": linked})) == "True|active"
    broken = make_user("broken")
    make_credential(broken, status=SliceCredential.Status.NEEDS_REAUTH)
    assert template.render(Context({"user": broken})) == "False|needs re-link"


def test_the_forms_work_end_to_end(user: Any, make_credential: Any) -> None:
    """The rendered Unlink form posts through Django's real CSRF check."""
    make_credential(user)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    request = RequestFactory().get("/")
    request.user = user
    request.META["CSRF_COOKIE"] = client.get("/slice/authorize/").cookies["csrftoken"].value
    html = CONTROL.render(RequestContext(request, {}))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert token
    response = client.post("/slice/unlink/", {"csrfmiddlewaretoken": token.group(1)})
    assert response.status_code == 302
    assert not SliceCredential.objects.filter(user=user).exists()


def test_helpers(user: Any, make_user: Callable[..., Any], make_credential: Any) -> None:
    assert services.is_linked(None) is False
    assert services.is_linked(AnonymousUser()) is False
    assert services.credential_of(AnonymousUser()) is None
    assert services.is_linked(user) is False
    credential = make_credential(make_user("bob"))
    bob = credential.user.__class__.objects.get(pk=credential.user_id)
    assert services.is_linked(bob) is True
    assert services.credential_of(bob) == credential
    credential.status = SliceCredential.Status.NEEDS_REAUTH
    credential.save()
    fresh = bob.__class__.objects.get(pk=bob.pk)
    assert services.is_linked(fresh) is False
    assert services.credential_of(fresh) == credential


def test_one_query_per_user_and_no_token_loaded(
    user: Any, make_credential: Any, django_assert_num_queries: Any
) -> None:
    make_credential(user)
    user = user.__class__.objects.get(pk=user.pk)
    with django_assert_num_queries(1) as queries:
        assert services.is_linked(user)
        render(CONTROL, user)
        render(Template("{% load slice_connect %}{{ user|slice_linked }}"), user)
        assert user.slice_credential.is_active  # the documented attribute, same cache
    (query,) = queries.captured_queries
    assert '."access_token"' not in query["sql"] and '."refresh_token"' not in query["sql"]


def test_not_linked_is_cached_too(user: Any, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1):
        assert not services.is_linked(user)
        assert not services.is_linked(user)
        assert services.credential_of(user) is None


def test_user_slice_credential_is_the_documented_attribute(user: Any, make_credential: Any) -> None:
    credential = make_credential(user)
    fresh = user.__class__.objects.get(pk=user.pk)
    assert fresh.slice_credential == credential
    assert Template("{{ user.slice_credential.status }}").render(Context({"user": fresh})) == (
        "active"
    )
