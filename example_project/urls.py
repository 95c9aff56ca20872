"""URLs of the example project; the Slice sandbox is served at the root, like Slice."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("spa/", views.spa, name="spa"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(
            template_name="example/login.html", redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("admin/", admin.site.urls),
    path("slice/", include("slice_connect.urls")),
    path("", include("example_project.slice_sandbox.urls")),
]
