"""The messages of ``/v1/ws`` (API.md, "Streaming output"): what a client may send, parsed and
validated, and the error event the service answers with.

A client sends text frames, each one JSON object with a ``type``::

    {"type": "auth", "api_key": "..."}                  first message, without a header key
    {"type": "run", "request": {...}, "session_id"?: "..."}
    {"type": "stdin", "text": "..."}
    {"type": "stdin_eof"}

A message is decoded as an HTTP body is (:func:`serve_app.api.decode_json`: no BOM, no
duplicate key, bounded depth), then checked strictly (unknown fields refused). A run's
``request`` is validated by the HTTP models themselves (:class:`ExecutionCreate`, or
:class:`SessionCall` beside a ``session_id``), so a refused field reads as it would over HTTP,
under ``request.``. Errors are :func:`error_event`: the API's error object, with the
``retry_after`` (seconds) that HTTP sends as ``Retry-After``, and beside it ``in_reply_to``,
the type of the message it refuses (``"run"``: that run is over, no record follows; ``"stdin"``:
that text was not sent, the run goes on).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from executors import check_text
from serve_app.api import ApiError, RequestBounds, decode_json, validate_body
from serve_app.api.errors import validation_details
from serve_app.errors import (
    InvalidFieldsError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

__all__ = [
    "AuthMessage",
    "Message",
    "RunMessage",
    "StdinEofMessage",
    "StdinMessage",
    "claimed_type",
    "decode_frame",
    "error_event",
    "parse_message",
    "run_body",
    "too_large",
    "validate_message",
]


_Body = TypeVar("_Body", bound=BaseModel)


def _text(value: str) -> str:
    return check_text(value, "text")


_Text = Annotated[StrictStr, AfterValidator(_text)]
"""What the engine accepts (and a key's hash can encode): no NUL, no lone surrogate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AuthMessage(_Strict):
    """The key, for a client that cannot send a header (a browser)."""

    type: Literal["auth"]
    api_key: _Text


class RunMessage(_Strict):
    """Start a run: ``request`` is an execution request, or a session call's body beside
    ``session_id``; it is validated by :func:`run_body`."""

    type: Literal["run"]
    request: dict[StrictStr, Any]
    session_id: StrictStr | None = None


class StdinMessage(_Strict):
    """More standard input for the running program."""

    type: Literal["stdin"]
    text: _Text


class StdinEofMessage(_Strict):
    """The end of the running program's standard input."""

    type: Literal["stdin_eof"]


Message = AuthMessage | RunMessage | StdinMessage | StdinEofMessage
_TAGS = frozenset({"auth", "run", "stdin", "stdin_eof"})
_MESSAGES: TypeAdapter[Message] = TypeAdapter(
    Annotated[Message, Field(discriminator="type")]  # an unknown type names the field
)


def parse_message(frame: str | bytes, bounds: RequestBounds) -> Message:
    """The message of one frame (:func:`decode_frame`, then :func:`validate_message`)."""
    return validate_message(decode_frame(frame, bounds))


def decode_frame(frame: str | bytes, bounds: RequestBounds) -> Any:
    """The JSON value of one frame. A binary frame is :class:`UnsupportedMediaTypeError` (the
    protocol is JSON in text frames, however JSON the bytes look); text that is not JSON is
    :class:`InvalidJsonError`."""
    if isinstance(frame, bytes):
        raise UnsupportedMediaTypeError("send JSON objects in text frames, not binary ones")
    # A text frame is valid UTF-8 (the WebSocket layer checks it): encoding cannot fail
    # but on a lone surrogate some ASGI servers let through, which the decoder then refuses.
    return decode_json(frame.encode("utf-8", "surrogatepass"), max_depth=bounds.max_json_depth)


def claimed_type(data: Any) -> str | None:
    """The protocol's ``type`` a decoded message claims, valid or not (``None``: none)."""
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if kind in _TAGS else None


def validate_message(data: Any) -> Message:
    """``data`` as a message; wrong fields, or an unknown ``type``: :class:`InvalidFieldsError`."""
    try:
        return _MESSAGES.validate_python(data, strict=True)
    except ValidationError as exc:
        raise _invalid("the message", exc, (), _TAGS) from None


def run_body(model: type[_Body], message: RunMessage, bounds: RequestBounds) -> _Body:
    """The run's request as the HTTP route would have validated it: ``model`` is
    :class:`ExecutionCreate`, or :class:`SessionCall` for a message with a ``session_id``."""
    try:
        return validate_body(model, message.request, bounds)
    except ValidationError as exc:
        raise _invalid("the request", exc, ("request",), frozenset()) from None


def _invalid(
    what: str, exc: ValidationError, prefix: tuple[str, ...], tags: frozenset[str]
) -> InvalidFieldsError:
    """The error naming each field under ``prefix`` (without the union's ``tags``, which
    pydantic puts first: ``run.request`` is the message's ``request``)."""
    errors = [
        {**error, "loc": (*prefix, *_field(error["type"], error["loc"], tags))}
        for error in exc.errors(include_url=False, include_input=False)
    ]
    count = len(errors)
    return InvalidFieldsError(
        f"{what} failed validation ({count} error{'s' if count > 1 else ''})",
        validation_details(errors),
    )


def _field(kind: str, loc: tuple[int | str, ...], tags: frozenset[str]) -> tuple[int | str, ...]:
    if kind.startswith("union_tag_"):  # no type, or one the protocol does not have
        return ("type",)
    return loc[1:] if loc and loc[0] in tags else loc


def too_large(message: str) -> ApiError:
    """A ``payload_too_large`` error saying what was too large (the class's own message speaks
    of a request body)."""
    return ApiError(PayloadTooLargeError.http_status, PayloadTooLargeError.code, message)


def error_event(error: ApiError, request_id: str, in_reply_to: str | None) -> dict[str, Any]:
    """``{"type": "error", "error": {...}, "in_reply_to": ...}``: the API's error object, with
    ``retry_after`` (whole seconds, as ``Retry-After``) where HTTP would send that header;
    ``in_reply_to`` is the type of the message refused (``None``: a message with no type the
    protocol knows). ``"run"``: the run is over (refused, or failed), no record follows."""
    body: dict[str, Any] = error.body(request_id)["error"]
    retry_after = {name.lower(): value for name, value in error.headers.items()}.get("retry-after")
    if retry_after is not None:
        body["retry_after"] = int(retry_after)
    return {"type": "error", "error": body, "in_reply_to": in_reply_to}
