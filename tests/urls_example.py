"""The example project's URLs (its pages, slice_connect and the sandbox) for browser tests."""

from __future__ import annotations

from example_project.urls import urlpatterns

__all__ = ["urlpatterns"]
