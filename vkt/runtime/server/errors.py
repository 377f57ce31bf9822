"""Errors that carry an HTTP status, and the JSON body they become (Triton's ``{"error": ...}``)."""

from __future__ import annotations

import json

from vkt.errors import InputError, VktError


class RequestError(InputError):
    """A request the client got wrong (HTTP 400 unless a subclass says otherwise)."""

    status = 400


class NotFoundError(RequestError):
    """Unknown route, model or version (HTTP 404)."""

    status = 404


class MethodNotAllowedError(RequestError):
    """Known route, wrong HTTP method (HTTP 405)."""

    status = 405


class RequestTimeoutError(RequestError):
    """The client stopped sending in the middle of its request (HTTP 408)."""

    status = 408


class LengthRequiredError(RequestError):
    """A body without Content-Length (HTTP 411): the server must know the size before reading."""

    status = 411


class PayloadTooLargeError(RequestError):
    """Body (or its decompressed form) over the server's limit (HTTP 413)."""

    status = 413


class UnsupportedMediaError(RequestError):
    """A Content-Encoding or image format the server does not take (HTTP 415)."""

    status = 415


class HeadersTooLargeError(RequestError):
    """The request head is longer, or has more header lines, than the server reads (HTTP 431)."""

    status = 431


class NotImplementedByServerError(RequestError):
    """A method or transfer coding the server does not implement (HTTP 501)."""

    status = 501


class VersionNotSupportedError(RequestError):
    """An HTTP version other than 1.x (HTTP 505)."""

    status = 505


class UnavailableError(VktError):
    """The request was refused before it was queued — queue full or shutting down (HTTP 503).

    Nothing ran, so the client may retry (after ``Retry-After``) or go to another replica.
    """

    status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReadyError(VktError):
    """A readiness check answered false: the KServe v2 health API says 4xx, so 400 (as Triton)."""

    status = 400


class DeadlineError(VktError):
    """The request was accepted but its deadline passed before a result was ready (HTTP 504)."""

    status = 504


def status_of(err: BaseException) -> int:
    """HTTP status for an exception: its ``status``, 400 for other user errors, 500 for the rest."""
    status = getattr(err, "status", None)
    if isinstance(status, int):
        return status
    return 400 if isinstance(err, InputError) else 500


def error_body(message: str) -> bytes:
    """``{"error": message}`` as UTF-8 JSON (Triton's error shape, which tritonclient parses)."""
    return json.dumps({"error": message}).encode()
