"""The emulator's errors, in OpenAI's shape as vLLM sends them."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    503: "ServiceUnavailableError",
}


class ApiError(Exception):
    """Raised by an endpoint; the app's handler answers it with `error_response`."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def bad(message: str, param: str | None = None) -> ApiError:
    """A 400 naming the field at fault."""
    return ApiError(400, message, param)


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error shape, as vLLM sends it."""
    error = {
        "message": message,
        "type": _ERROR_TYPES.get(status, "InternalServerError"),
        "param": param,
        "code": status,
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)
