"""URLs: ``path("slice/", include("slice_connect.urls"))``."""

from __future__ import annotations

from django.urls import path

from . import api_views, views

app_name = "slice_connect"

urlpatterns = [
    path("authorize/", views.AuthorizeView.as_view(), name="authorize"),
    path("callback/", views.CallbackView.as_view(), name="callback"),
    path("unlink/", views.UnlinkView.as_view(), name="unlink"),
    # JSON for single-page apps (slice_connect.api_views)
    path("api/status/", api_views.status, name="api-status"),
    path("api/authorize/", api_views.authorize, name="api-authorize"),
    path("api/unlink/", api_views.unlink, name="api-unlink"),
]
