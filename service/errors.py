"""The JSON error format `{"error": {"code", "message"}}` and the handlers that map every failure to it.

Under /v2 (the Open Inference Protocol) the same errors take the protocol's shape, `{"error": "message"}`
(docs/protocol-oip.md). A client that goes away before its request is read is answered (into the void)
with 499 `client_closed_request`, logged at INFO: it is the client's doing, not a server error.

Every error a client can cause is an `ApiError` (or a decoder error from `dynadapter.contract.images`, or a
request validation error from FastAPI); anything else is a bug and answers a JSON 500 "internal".
"""

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from dynadapter.contract.images import ImageDecodeError, ImageTooLargeError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status, a stable machine-readable code and a message for people."""

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


def bad_parameter(message: str) -> ApiError:
    return ApiError(422, "invalid_parameter", message)


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "missing or invalid API key", {"WWW-Authenticate": "Bearer"})


def payload_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")


def too_many_images(limit: int) -> ApiError:
    return ApiError(413, "too_many_images", f"more than {limit} images in one request")


def bad_request(message: str) -> ApiError:
    """A malformed body (OIP tensors, multipart parts): 400."""
    return ApiError(400, "bad_request", message)


def model_not_found(name: str, version: str | None, served: Sequence[str]) -> ApiError:
    """404 naming what is served instead: `served` holds model names (or, with `version`, that model's
    versions), never paths, so the message tells a client what to ask for without showing the disk."""
    which = f"version {version!r} of model {name!r}" if version is not None else f"model {name!r}"
    return ApiError(404, "model_not_found", f"{which} is not served; served: {', '.join(served) or 'none'}")


CLIENT_CLOSED_REQUEST = 499  # nginx's code for a client that hung up before its answer


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415,
        "unsupported_media_type",
        f"unsupported content type {content_type!r}: send multipart/form-data with a 'file' field or an image/* body",
    )


def not_ready(reason: str = "the model is not loaded and warmed yet") -> ApiError:
    return ApiError(503, "not_ready", reason, {"Retry-After": "1"})


def overloaded(retry_after_s: int) -> ApiError:
    return ApiError(
        503, "overloaded", "the request queue is full, try again later", {"Retry-After": str(retry_after_s)}
    )


def non_finite_output(input_name: str, image: int) -> ApiError:
    """400: an input the model turns into NaN or infinite scores (e.g. finite pixels of 3e38). The input is
    at fault, not the server; a non-finite answer is never sent."""
    return ApiError(
        400, "non_finite_output", f"input {input_name!r} (image {image}) drives the model to non-finite scores"
    )


def shutting_down() -> ApiError:
    """503 for a request the shutdown timeout (setting shutdown_timeout_s) cut short; the connection closes."""
    return ApiError(
        503,
        "shutting_down",
        "the service is shutting down and the request could not finish in time; retry",
        {"Retry-After": "1", "Connection": "close"},
    )


def deadline_exceeded(timeout_s: float) -> ApiError:
    return ApiError(504, "timeout", f"the request did not finish within {timeout_s:g} s")


def request_timeout(timeout_s: float) -> ApiError:
    """The body did not arrive within the request's deadline (a slow client, as nginx and Triton answer)."""
    return ApiError(408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s")


def unsupported_encoding(coding: str) -> ApiError:
    return ApiError(
        415, "unsupported_media_type", f"unsupported Content-Encoding {coding!r}: send gzip, deflate or identity"
    )


def bad_header(name: str, rule: str) -> ApiError:
    """A malformed header (a length that is not one decimal number, ...): 400."""
    return ApiError(400, "bad_request", f"{name}: {rule}")


OIP_PREFIX = "/v2"


def error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None, path: str = ""
) -> JSONResponse:
    """The error body: `{"error": {"code", "message"}}`, or the protocol's `{"error": message}` under /v2."""
    body: dict[str, object] = {"error": {"code": code, "message": message}}
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        body = {"error": message}
    return JSONResponse(body, status_code=status_code, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.headers, request.url.path)


async def _undecodable(request: Request, exc: Exception) -> JSONResponse:
    return error_response(400, "invalid_image", str(exc), path=request.url.path)


async def _too_many_pixels(request: Request, exc: Exception) -> JSONResponse:
    return error_response(413, "image_too_large", str(exc), path=request.url.path)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_parameter", _describe_validation(exc), path=request.url.path)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's own errors (404, 405, ...): same shape, code from the standard reason phrase.
    assert isinstance(exc, StarletteHTTPException)
    return error_response(
        exc.status_code, _status_code_name(exc.status_code), str(exc.detail), exc.headers, request.url.path
    )


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    logger.info("client closed the connection during %s %s", request.method, request.url.path)
    return error_response(
        CLIENT_CLOSED_REQUEST, "client_closed_request", "the client closed the connection", path=request.url.path
    )


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal server error", path=request.url.path)


def _status_code_name(status_code: int) -> str:
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        return "error"
    return phrase.lower().replace(" ", "_").replace("-", "_")


def _describe_validation(exc: RequestValidationError) -> str:
    """One line per problem, e.g. "threshold: Input should be less than or equal to 1"."""
    parts = []
    for error in exc.errors():
        # loc is ("query", "threshold"); a model-level check has only ("query",).
        where = ".".join(str(item) for item in error.get("loc", ())[1:])
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ImageDecodeError, _undecodable)
    app.add_exception_handler(ImageTooLargeError, _too_many_pixels)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal)
