"""URLs: ``path("slice/", include("slice_connect.urls"))``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "slice_connect"

urlpatterns = [
    path("authorize/", views.AuthorizeView.as_view(), name="authorize"),
    path("callback/", views.CallbackView.as_view(), name="callback"),
    path("unlink/", views.UnlinkView.as_view(), name="unlink"),
]
