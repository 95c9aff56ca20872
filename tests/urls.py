from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("home")


urlpatterns = [
    path("", home, name="home"),
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="slice_sandbox/login.html"),
        name="login",
    ),
    path("slice/", include("slice_connect.urls")),
    path("", include("example_project.slice_sandbox.urls")),
]
