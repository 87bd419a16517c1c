"""Request bodies of the HTTP API, in OpenAI's field names.

An unknown top-level field is a 400 naming it (OpenAI rejects unrecognised arguments too, and a
silently ignored ``"temprature"`` changes the answer). The standard OpenAI fields are all declared:
those convrec honours (`stop`, the penalties, `logit_bias`, `logprobs`, `seed`, `n`, ...) are
validated here and carried out by the engine; `IGNORED_FIELDS` change nothing a recommender
returns and are accepted as they come; the rest are accepted at their neutral value and refused
with a 400 naming the field otherwise (`validation.check_supported`). Inside a message, unknown
fields (``name``, ``refusal``, ``tool_calls``, ...) are ignored, so a message the API returned can
be sent back as it is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Part(BaseModel):
    # strict: "10" is not a number and 1 is not a boolean
    model_config = ConfigDict(strict=True, extra="ignore")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    # accepted for compatibility with OpenAI clients, and ignored: they label, store or route a
    # request and change nothing in the answer
    user: Any = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None


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


class ResponseFormat(_Part):
    type: str


MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_N = 8  # choices per request: each is a row of the batch
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class ChatCompletionRequest(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # honoured: stop sequences, OpenAI's additive penalties and per-token biases, log-probabilities, a seed
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    seed: int | None = None
    # accepted at their neutral value only (validation.check_supported): the answer is a plain-text list
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    # convrec extensions (the openai client sends them with extra_body=...)
    constrained: bool = True  # catalog-constrained lists, as /v1/recommend and the page; False: free text
    k: int | None = Field(None, ge=1)
    exclude_seen: bool = True


class RecommendRequest(_Body):
    model: str | None = None
    seed: int | None = None  # lists are greedy: nothing to seed
    messages: list[ChatMessage] = Field(min_length=1)
    k: int = Field(10, ge=1)
    exclude_seen: bool = True
    constrained: bool = True
