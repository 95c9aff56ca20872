"""URLs of the Slice sandbox served alone (``manage.py slice_sandbox``), for another site.

Slice's endpoints at the root, as on Slice, plus the sandbox's sign-in page (a Slice
account is needed on the consent page) and a home page that says what this is.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    path(
        "",
        TemplateView.as_view(template_name="example/sandbox_home.html"),
        name="sandbox-home",
    ),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(
            template_name="slice_sandbox/login.html", redirect_authenticated_user=True
        ),
        name="login",
    ),
    path(
        "accounts/logout/",
        auth_views.LogoutView.as_view(next_page="login"),
        name="logout",
    ),
    path("admin/", admin.site.urls),
    path("", include("example_project.slice_sandbox.urls")),
]
