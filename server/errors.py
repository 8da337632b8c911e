"""The one place where failures become gRPC statuses.

Servicers and storage raise ``ServiceError(Error.X, message)``; the embedder raises its own exceptions (it
knows nothing of gRPC). ``to_status`` maps both to a status code, and ``rpc_method`` wraps every servicer
method so that no exception escapes as an opaque UNKNOWN.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from embedder.batcher import Cancelled, Expired, QueueFull
from embedder.errors import AssetMissing, BadImage, ImageBusy, ImageTooLarge, UnknownWord
from embedder.head import HeadMismatch

log = logging.getLogger("visionsearch.errors")


class Error(enum.Enum):
    BAD_REQUEST = ("bad_request", grpc.StatusCode.INVALID_ARGUMENT)
    NOT_FOUND = ("not_found", grpc.StatusCode.NOT_FOUND)
    ALREADY_EXISTS = ("already_exists", grpc.StatusCode.ALREADY_EXISTS)
    PRECONDITION = ("precondition", grpc.StatusCode.FAILED_PRECONDITION)
    OVERLOADED = ("overloaded", grpc.StatusCode.RESOURCE_EXHAUSTED)
    DISK_FULL = ("disk_full", grpc.StatusCode.RESOURCE_EXHAUSTED)
    TOO_LARGE = ("too_large", grpc.StatusCode.RESOURCE_EXHAUSTED)
    ABORTED = ("aborted", grpc.StatusCode.ABORTED)
    DATA_LOSS = ("data_loss", grpc.StatusCode.DATA_LOSS)
    UNIMPLEMENTED = ("unimplemented", grpc.StatusCode.UNIMPLEMENTED)
    DEADLINE = ("deadline", grpc.StatusCode.DEADLINE_EXCEEDED)
    CANCELLED = ("cancelled", grpc.StatusCode.CANCELLED)
    UNAVAILABLE = ("unavailable", grpc.StatusCode.UNAVAILABLE)
    INTERNAL = ("internal", grpc.StatusCode.INTERNAL)

    @property
    def code(self) -> grpc.StatusCode:
        return self.value[1]


class ServiceError(Exception):
    def __init__(self, error: Error, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


_EMBEDDER_ERRORS: dict[type[Exception], Error] = {
    BadImage: Error.BAD_REQUEST,
    ImageTooLarge: Error.BAD_REQUEST,
    ImageBusy: Error.OVERLOADED,
    UnknownWord: Error.NOT_FOUND,
    AssetMissing: Error.UNAVAILABLE,
    HeadMismatch: Error.PRECONDITION,
    QueueFull: Error.OVERLOADED,
    Expired: Error.DEADLINE,
    Cancelled: Error.CANCELLED,
}


def to_status(exc: BaseException) -> tuple[Error, str]:
    if isinstance(exc, ServiceError):
        return exc.error, exc.message
    for cls, error in _EMBEDDER_ERRORS.items():
        if isinstance(exc, cls):
            return error, str(exc)
    return Error.INTERNAL, f"internal error ({type(exc).__name__}); the server logged the details"


F = TypeVar("F", bound=Callable[..., Any])


def rpc_method(fn: F) -> F:
    """Wrap a servicer method: map any exception to a precise status and abort the call with it."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            error, message = to_status(exc)
            if error is Error.INTERNAL:
                log.exception("unhandled error in %s", fn.__qualname__)
            else:
                log.info("%s refused: %s %s", fn.__qualname__, error.code.name, clip(message))
            _abort(context, error, clip(message))

    return wrapper  # type: ignore[return-value]


class AbortCall(Exception):
    """Raised by the aio server's stand-in for ``context.abort`` (see server/aio.py)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


def _is_abort(exc: Exception) -> bool:
    # context.abort() raises a bare Exception subclass private to grpc; let it pass through untouched.
    return isinstance(exc, AbortCall) or type(exc).__module__.startswith("grpc")


def _abort(context: grpc.ServicerContext, error: Error, message: str) -> NoReturn:
    context.abort(error.code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def fail(error: Error, message: str) -> NoReturn:
    raise ServiceError(error, message)


QUOTE_CHARS = 100
MAX_MESSAGE_CHARS = 1000


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of a caller's input for an error message, cut to ``limit`` characters: a message that
    echoes a 1 MB name would itself exceed the client's metadata limit and hide the real error."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def clip(message: str) -> str:
    """The last guard on any status message: at most ``MAX_MESSAGE_CHARS`` characters."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 40] + f"... (message cut from {len(message):,} characters)"
