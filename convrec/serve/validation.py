"""Request validation for the HTTP API: every bad input becomes an OpenAI-shaped 4xx `APIError`.

Bodies are read here, not by FastAPI's automatic parsing, to bound their size while reading, to
refuse what would break later stages with a 500, and to word the errors the OpenAI way:

- over ``max_body_bytes``: 413, checked on the declared length and again while reading;
- not JSON, nested deeper than ``MAX_DEPTH`` (the parser recurses: 50,000 levels would raise
  RecursionError) or holding a lone surrogate such as ``"\\ud800"`` (valid JSON escapes, but not
  Unicode: the tokenizer and the UTF-8 response encoder both fail on it): 400 ``invalid_json``;
- an unknown top-level field (``"temprature"``): 400 ``unknown_parameter`` naming it, as OpenAI
  does, since a silently ignored typo changes the answer. A few OpenAI fields that do not change
  a recommendation are accepted and ignored (see `schemas.IGNORED_FIELDS`); fields inside a
  message are ignored, so a message object returned by the API can be sent back as it is;
- a wrong type or value: 400 ``invalid_value`` with the field's path as ``param``;
- a standard OpenAI field convrec cannot honour (tools, a JSON response format, audio, ...) at a
  non-neutral value: 400 ``unsupported_value`` naming it (`check_supported`); at its neutral value
  (``"response_format": {"type": "text"}``, ``"tools": []``) it is accepted.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from convrec.serve.schemas import MAX_STOP, ChatCompletionRequest, ChatMessage

MAX_DEPTH = 32  # the deepest valid body (a content part inside a message) is 5 levels
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class ServeSettings:
    model_name: str = "convrec"
    api_key: str | None = None
    timeout_s: float = 60.0
    max_k: int = 100
    max_tokens: int = 1024
    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_input_chars: int = 100_000


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def server_error() -> APIError:
    return APIError(500, "The server had an error while processing your request.", "server_error")


def _printable(path: list) -> str:
    """A field path for an error message; a key may itself hold a surrogate, which JSON output cannot."""
    return ".".join(str(p) for p in path).encode("utf-8", "backslashreplace").decode()


def check_structure(data) -> None:
    """Depth ≤ MAX_DEPTH and no lone surrogate in any key or string, walked without recursion."""
    stack: list[tuple[object, list, int]] = [(data, [], 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise too_deep()
        if isinstance(node, dict):
            for k, v in node.items():
                if _SURROGATE.search(k):
                    raise _surrogate([*path, k])
                stack.append((v, [*path, k], depth + 1))
        elif isinstance(node, list):
            stack.extend((v, [*path, i], depth + 1) for i, v in enumerate(node))
        elif isinstance(node, str) and _SURROGATE.search(node):
            raise _surrogate(path)


def too_deep() -> APIError:
    return APIError(400, f"The JSON body is nested more than {MAX_DEPTH} levels deep.", code="invalid_json")


def _surrogate(path: list) -> APIError:
    where = _printable(path) or None
    return APIError(
        400,
        f"We could not parse the JSON body of your request: {f'{where!r}' if where else 'a string'} holds a lone "
        "surrogate (an unpaired \\ud800-\\udfff escape), which is not valid Unicode.",
        param=where,
        code="invalid_json",
    )


def parse_json(body: bytes):
    """The JSON value of a body, or a 400 that says why not."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise APIError(
            400, "We could not parse the JSON body of your request: it is not valid JSON.", code="invalid_json"
        ) from None
    check_structure(data)
    return data


def validate(data, schema: type[BaseModel]):
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        extra = [x for x in errors if x["type"] == "extra_forbidden"]
        err = extra[0] if extra else errors[0]
        param = _printable(list(err["loc"])) or None
        if extra:
            raise APIError(
                400, f"Unrecognized request argument supplied: {param}.", param=param, code="unknown_parameter"
            ) from None
        where = f"'{param}'" if param else "the body"
        raise APIError(400, f"Invalid value for {where}: {err['msg']}.", param=param, code="invalid_value") from None


async def read_body(request: Request, schema: type[BaseModel], limit: int):
    """Read at most ``limit`` bytes, parse and validate them against ``schema``."""
    too_big = APIError(413, f"The request body is over the {limit:,}-byte limit.", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return validate(parse_json(bytes(body)), schema)


def authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise APIError(401, "You didn't provide an API key: send 'Authorization: Bearer KEY'.", code="missing_api_key")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")


def check_model(name: str | None, served: str) -> None:
    if name is not None and name != served:
        raise APIError(
            404,
            f"The model '{name}' does not exist; this server serves '{served}'.",
            param="model",
            code="model_not_found",
        )


def conversation(messages: list[ChatMessage], settings: ServeSettings) -> list[dict]:
    """The messages as role/content dicts, within the message and character limits."""
    if len(messages) > settings.max_messages:
        raise APIError(400, f"At most {settings.max_messages} messages are allowed.", param="messages")
    msgs = [{"role": m.role, "content": m.text()} for m in messages]
    chars = sum(len(m["content"]) for m in msgs)
    if chars > settings.max_input_chars:
        raise APIError(
            400,
            f"The conversation has {chars:,} characters, over the {settings.max_input_chars:,} allowed.",
            param="messages",
            code="context_length_exceeded",
        )
    return msgs


def check_k(k: int, max_k: int) -> int:
    if not 1 <= k <= max_k:
        raise APIError(400, f"k must be between 1 and {max_k}.", param="k", code="invalid_value")
    return k


def check_max_tokens(max_new: int, limit: int) -> int:
    if max_new > limit:
        raise APIError(400, f"max_tokens must be at most {limit}.", param="max_tokens")
    return max_new


def unsupported(field: str, why: str) -> APIError:
    return APIError(400, f"'{field}' is not supported by this server: {why}.", param=field, code="unsupported_value")


# field -> (its neutral values, why another value cannot be honoured)
_NEUTRAL: dict[str, tuple[tuple, str]] = {
    "tools": ((None, []), "convrec answers with a list of catalog items and calls no tools"),
    "functions": ((None, []), "convrec answers with a list of catalog items and calls no functions"),
    "tool_choice": ((None, "none", "auto"), "convrec calls no tools"),
    "function_call": ((None, "none", "auto"), "convrec calls no functions"),
    "modalities": ((None, ["text"]), "convrec writes text only"),
    "audio": ((None,), "convrec writes text only"),
    "prediction": ((None,), "predicted outputs are not implemented"),
    "reasoning_effort": ((None,), "the served model is not a reasoning model"),
    "verbosity": ((None,), "the answer's length is set by k (a list of k items)"),
    "web_search_options": ((None,), "convrec recommends from its catalog and does not search the web"),
}


def check_supported(req: ChatCompletionRequest, vocab_size: int) -> None:
    """Refuse, naming the field, every OpenAI field whose value convrec cannot honour."""
    for name, (neutral, why) in _NEUTRAL.items():
        if getattr(req, name) not in neutral:
            raise unsupported(name, why)
    if req.response_format is not None and req.response_format.type != "text":
        raise unsupported(
            "response_format", 'the answer is plain text, one `Title (Year)` per line; only {"type": "text"}'
        )
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs", code="invalid_value")
    stop_sequences(req.stop)
    token_biases(req.logit_bias, vocab_size)


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > MAX_STOP or not all(stops):
        raise APIError(400, f"'stop' takes 1 to {MAX_STOP} non-empty strings.", param="stop", code="invalid_value")
    return stops


def token_biases(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """OpenAI's ``{"token id": bias}`` with ids in the served vocabulary and biases in [-100, 100]."""
    out = {}
    for key, value in (bias or {}).items():
        if not (key.isdigit() and int(key) < vocab_size):
            raise APIError(
                400,
                f"'logit_bias' keys are token ids of the served model (0 to {vocab_size - 1}), got {key!r}.",
                param="logit_bias",
                code="invalid_value",
            )
        if not -100 <= value <= 100:
            raise APIError(
                400, "'logit_bias' values must be between -100 and 100.", param="logit_bias", code="invalid_value"
            )
        out[int(key)] = float(value)
    return out
