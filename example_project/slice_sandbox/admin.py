from __future__ import annotations

from django.contrib import admin

from .models import TokenRequest


@admin.register(TokenRequest)
class TokenRequestAdmin(admin.ModelAdmin):
    list_display = ("created", "grant_type", "client_id", "status_code", "error")
    list_filter = ("grant_type", "status_code", "error")
    date_hierarchy = "created"
