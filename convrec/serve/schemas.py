"""Request bodies of the HTTP API, in OpenAI's field names.

An unknown top-level field is a 400 naming it (OpenAI rejects unrecognised arguments too, and a
silently ignored ``"temprature"`` changes the answer); the OpenAI fields in `IGNORED_FIELDS` are
accepted and ignored, since they do not change a recommendation. Inside a message, unknown fields
(``name``, ``refusal``, ``tool_calls``, ...) are ignored, so a message the API returned can be sent
back as it is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Part(BaseModel):
    # strict: "10" is not a number and 1 is not a boolean
    model_config = ConfigDict(strict=True, extra="ignore")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    # accepted for compatibility with OpenAI clients, and ignored
    user: Any = None
    seed: Any = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None


IGNORED_FIELDS = tuple(_Body.model_fields)


class ContentPart(_Part):
    type: str
    text: str | None = None


class ChatMessage(_Part):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(_Part):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # convrec extensions (the openai client sends them with extra_body=...)
    constrained: bool = False
    k: int | None = Field(None, ge=1)
    exclude_seen: bool = True


class RecommendRequest(_Body):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    k: int = Field(10, ge=1)
    exclude_seen: bool = True
    constrained: bool = True
