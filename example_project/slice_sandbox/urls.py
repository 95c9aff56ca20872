"""Slice's URLs, without trailing slashes: ``path("", include(<this module>))``."""

from __future__ import annotations

from django.urls import path, register_converter

from . import api, views


class SignedIdConverter:
    """Slice ids are signed 64-bit integers, often negative."""

    regex = r"-?[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if not -(2**63) <= number < 2**63:
            raise ValueError(value)  # out of range: the URL does not match (404)
        return number

    def to_url(self, value: int) -> str:
        return str(int(value))


register_converter(SignedIdConverter, "slice_id")


def _api(kind: str, name: str) -> list:
    return [
        path(
            f"api/v1/{kind}",
            api.CollectionView.as_view(kind=kind),
            name=f"sandbox-{kind}",
        ),
        path(
            f"api/v1/{kind}/<slice_id:object_id>",
            api.DetailView.as_view(kind=kind),
            name=f"sandbox-{name}",
        ),
    ]


urlpatterns = [
    path("oauth/authorize", views.SandboxAuthorizationView.as_view(), name="sandbox-authorize"),
    path("oauth/token", views.SandboxTokenView.as_view(), name="sandbox-token"),
    path("oauth/revoke", views.SandboxRevokeTokenView.as_view(), name="sandbox-revoke"),
    path("api/v1/users/self", api.UserSelfView.as_view(), name="sandbox-user-self"),
    *_api("orders", "order"),
    *_api("items", "item"),
    *_api("shipments", "shipment"),
    *_api("mailboxes", "mailbox"),
]
