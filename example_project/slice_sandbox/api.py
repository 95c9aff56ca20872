"""The REST API: Bearer-protected, JSON ``{"result": ..., "currentTime": ms}`` like Slice."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.views.generic import ProtectedResourceView

from .data import Dataset, build_dataset, build_user, to_ms
from .views import SandboxOAuthLibMixin

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _now_ms() -> int:
    return to_ms(timezone.now())


def api_response(result: Any, status: int = 200) -> JsonResponse:
    return JsonResponse({"result": result, "currentTime": _now_ms()}, status=status)


def api_error(status: int, error: str, message: str) -> JsonResponse:
    return JsonResponse(
        {"error": error, "message": message, "currentTime": _now_ms()}, status=status
    )


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")


class InvalidParameter(ValueError):
    pass


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.GET.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidParameter(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise InvalidParameter(f"{name} must be between {low} and {high}, got {value}")
    return value


# Bearer tokens, not cookies, authenticate API calls, so CSRF does not apply.
@method_decorator(csrf_exempt, name="dispatch")
class SliceApiView(SandboxOAuthLibMixin, ProtectedResourceView):
    """Base view: a valid Bearer token is required before any handler runs."""

    http_method_names = ["get", "head", "options"]

    def unauthenticated_response(
        self, request: HttpRequest, oauthlib_request: Any = None
    ) -> HttpResponse:
        oauth2_error = dict(getattr(oauthlib_request, "oauth2_error", None) or {})
        oauth2_error.setdefault("error", "invalid_token")
        oauth2_error.setdefault("error_description", "An access token is required.")
        status = 403 if oauth2_error["error"] == "insufficient_scope" else 401
        response = api_error(status, oauth2_error["error"], oauth2_error["error_description"])
        params = ", ".join(f'{key}="{_quote(str(value))}"' for key, value in oauth2_error.items())
        response["WWW-Authenticate"] = f'Bearer realm="Slice sandbox", {params}'
        return response

    def api_root(self) -> str:
        # Absolute and mount-point aware, e.g. "https://host/api/v1".
        orders = self.request.build_absolute_uri(reverse("sandbox-orders"))
        return orders.rsplit("/", 1)[0]

    def dataset(self) -> Dataset:
        return build_dataset(self.request.resource_owner, self.api_root())  # type: ignore[attr-defined]


class UserSelfView(SliceApiView):
    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return api_response(build_user(request.resource_owner, self.api_root()))  # type: ignore[attr-defined]


class CollectionView(SliceApiView):
    """A list endpoint with ``since`` (ms, exclusive), ``limit`` and ``offset``."""

    kind = ""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            since = _int_param(request, "since", -1, 0, 2**63 - 1)
            limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            offset = _int_param(request, "offset", 0, 0, 2**31 - 1)
        except InvalidParameter as exc:
            return api_error(400, "invalid_parameter", str(exc))
        records = [r for r in self.dataset().newest_first(self.kind) if r["updateTime"] > since]
        return api_response(records[offset : offset + limit])


class DetailView(SliceApiView):
    kind = ""

    def get(self, request: HttpRequest, *args: Any, object_id: int, **kwargs: Any) -> HttpResponse:
        record = self.dataset().collection(self.kind).get(object_id)
        if record is None:
            return api_error(404, "not_found", f"No {self.kind[:-1]} with id {object_id}.")
        return api_response(record)
