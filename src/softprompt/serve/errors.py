"""Errors as OpenAI's API sends them: ``{"error": {"message", "type", "param", "code"}}`` with a status.

Every error the server answers goes through :class:`APIError`, so clients built for OpenAI
(the ``openai`` package raises ``BadRequestError``, ``AuthenticationError``, ``RateLimitError``...)
read softprompt's errors the same way.

Example:
    >>> err = not_found("no model 'x'; models: a, b")
    >>> error = err.body()["error"]
    >>> err.status, error["type"]
    (404, 'invalid_request_error')
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error answer: HTTP ``status`` and OpenAI's error fields; ``headers`` go on the response."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(message: str, code: str = "model_not_found") -> APIError:
    return APIError(404, message, code=code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, type="authentication_error", code="invalid_api_key")


def forbidden(message: str) -> APIError:
    return APIError(403, message, type="permission_error", code="insufficient_permissions")


def too_many_requests(message: str, retry_after_s: int) -> APIError:
    return APIError(
        429, message, type="rate_limit_error", code="queue_full", headers={"Retry-After": str(retry_after_s)}
    )


def timed_out(message: str) -> APIError:
    # 408, not 504: the request was good, the server ran out of the time it allows one request.
    return APIError(408, message, type="timeout_error", code="request_timeout")


def model_failure(message: str) -> APIError:
    """A failure inside the model while running one request (the others in its batch go on)."""
    return APIError(500, message, type="server_error", code="model_error")


def unavailable(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="shutting_down")
