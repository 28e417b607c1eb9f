"""What the REST codecs (/classify, OIP infer) share: the data plane's channel over a Starlette request."""

from starlette.requests import Request

from dynadapter.service.data_plane import Channel
from dynadapter.service.disconnect import http_disconnect
from dynadapter.service.middleware import label_request, read_within


def channel(request: Request) -> Channel:
    """The request's metrics label (in its scope, for RequestMetricsMiddleware), its body's deadline (for
    BodyReadingMiddleware) and its client's disconnect (the next ASGI message once the body is read)."""
    return Channel(
        label=lambda model, version: label_request(request.scope, model, version),
        limit_read=lambda timeout_s: read_within(request.scope, timeout_s),
        disconnected=lambda: http_disconnect(request.receive),
    )
