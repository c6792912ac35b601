"""Pydantic models of every wire shape: OpenAI chat request, response, chunk, model card.

Requests are strict about the fields OpenAI defines (types and ranges) and keep unknown
fields (``extra="allow"``) so OpenAI-compatible upstreams receive them untouched.
Responses keep unknown upstream fields too; ``model_dump(exclude_none=True)`` is the body.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import InvalidRequestError


class _Open(BaseModel):
    """A wire object that carries fields we do not model through unchanged."""

    model_config = ConfigDict(extra="allow")


class _Strict(_Open):
    """A client-sent object: types are checked as OpenAI checks them ("yes" is no boolean,
    "0.5" no number), unknown fields still carried through."""

    model_config = ConfigDict(extra="allow", strict=True)


# --------------------------------------------------------------------------- request

#: the widest integers a request may carry: 32-bit where a store column or a provider
#: holds the value (token counts), 64-bit for a seed (OpenAI's own range)
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class OtherPart(_Strict):
    """Any other content part (input_audio, file, …): forwarded as is."""

    type: str


def _part_kind(part: Any) -> str:
    kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
    return kind if kind in ("text", "image_url") else "other"


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[ImagePart, Tag("image_url")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_kind),
]


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _role_rules(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a '{self.role}' message needs 'content'")
        return self

    def text(self) -> str:
        """The message's text parts joined (images and other parts left out)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(strict=True)

    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Strict):
    name: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None

    model_config = ConfigDict(
        extra="allow", strict=True, populate_by_name=True, serialize_by_alias=True
    )


class ResponseFormat(BaseModel):
    model_config = ConfigDict(strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs 'json_schema'")
        return self


class StreamOptions(_Strict):
    include_usage: bool | None = None


class RouterOptions(BaseModel):
    """A request's ``"llmrouter"`` object: what this router does for it beyond OpenAI's
    fields (never sent upstream). Unknown fields are refused, naming them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: Any) -> Any:
        if not isinstance(value, dict | RouterOptions):
            raise ValueError(
                "'llmrouter' is an object, e.g. {\"builtin_tools\": false}, "
                f"not {type(value).__name__}"
            )
        return value

    #: the built-in tools offered (true or absent: every one the config, the model and the
    #: key allow; false: none; a list: only these, each of which must be allowed)
    builtin_tools: (
        bool | Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=128)] | None
    ) = None
    #: a stream carries a progress chunk after each round of built-in tool calls
    tool_progress: bool = False


class ChatRequest(_Strict):
    """``POST /v1/chat/completions`` body (OpenAI's fields, validated; others passed on)."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    llmrouter: RouterOptions | None = None

    @field_validator("model")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        # A name reaches the ledger's columns (an unlisted model) and log lines as it is;
        # PostgreSQL refuses a NUL and no model is named with control characters.
        if not value.isprintable():
            raise ValueError("a model name is printable text, without control characters")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def output_limit(self) -> int | None:
        """The caller's cap on generated tokens, whichever field carried it."""
        return self.max_completion_tokens or self.max_tokens

    def upstream_body(self, upstream_model: str) -> dict[str, Any]:
        """The request as JSON for an OpenAI-compatible upstream, for ``upstream_model``."""
        body = self.model_dump(exclude_none=True, by_alias=True, exclude={"llmrouter"})
        body["model"] = upstream_model
        if not self.stream:
            body.pop("stream", None)
        return body


# --------------------------------------------------------------------------- response


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: e.g. ``{"cached_tokens": 120}``, ``{"reasoning_tokens": 64}``
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


def _text_of_parts(content: Any) -> Any:
    """Some OpenAI-format servers (Mistral's reasoning models) answer with a list of parts;
    clients get the text parts joined, thinking parts left out."""
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return content


class AssistantMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None

    _content = field_validator("content", mode="before")(
        classmethod(lambda cls, v: _text_of_parts(v))
    )


class Choice(_Open):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletion(_Open):
    """OpenAI's ``chat.completion`` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class FunctionCallDelta(_Open):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Open):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class Delta(_Open):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    refusal: str | None = None

    _content = field_validator("content", mode="before")(
        classmethod(lambda cls, v: _text_of_parts(v))
    )


class ChunkChoice(_Open):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(_Open):
    """OpenAI's ``chat.completion.chunk`` object (one SSE event of a stream)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --------------------------------------------------------------------------- models


class Pricing(BaseModel):
    prompt: str
    completion: str


class VideoTerms(BaseModel):
    """What a video model's tasks may ask for, and its price per second by resolution."""

    resolutions: list[str]
    ratios: list[str]
    min_duration: int
    max_duration: int
    fps: int
    price_per_second: dict[str, str] | None = None


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models`` (seed 001's fields plus OpenAI's ``object``/``owned_by``)."""

    id: str
    object: Literal["model"] = "model"
    name: str
    created: int
    owned_by: str
    description: str
    pricing: Pricing
    context_length: int | None = None
    max_output_length: int | None = None
    input_modalities: list[str]
    output_modalities: list[str]
    supported_sampling_parameters: list[str]
    supported_features: list[str]
    #: a video model's terms (``output_modalities: ["video"]``)
    video: VideoTerms | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a chat body; ``InvalidRequestError`` names the first field at fault."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    check_json_values(body)
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise InvalidRequestError(message, param=param) from None


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """``("Invalid 'messages[0].role': Input should be ...", "messages[0].role")``."""
    # Of a union's failed branches, the deepest error is the one that says what is wrong.
    error = max(exc.errors(), key=lambda e: len(e["loc"]))
    param = ""
    tag_expected = False  # pydantic names a tagged union's branch by its tag, next in loc
    for item in error["loc"]:
        if isinstance(item, int):
            param += f"[{item}]"
        elif tag_expected:
            tag_expected = False
        elif "[" in item or item in _TYPE_NAMES:
            tag_expected = "tagged-union[" in item
        else:
            param += ("." if param else "") + item
    if error["type"] == "missing":
        return f"Missing required parameter: '{param}'.", param
    message = error["msg"].removeprefix("Value error, ")
    return f"Invalid '{param or 'body'}': {message}.", param or None


# Names pydantic puts into an error's location for the branch of a union that failed.
_TYPE_NAMES = {"str", "int", "float", "bool", "NamedToolChoice"}


# --------------------------------------------------------------------------- input values


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], body: Any) -> Body:
    """``body`` (a JSON object) checked by ``model``: a 400 naming the first bad field, a
    value no database or encoder can hold (``check_json_values``) included."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("The request body must be a JSON object.")
    fields = dict(body)
    check_json_values(fields)
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise InvalidRequestError(message, param=param) from None


def check_json_values(body: dict[str, Any]) -> None:
    """Refuse any string no UTF-8 encoder can write (a lone surrogate such as ``"\\ud800"``,
    as a value or a key) and any number that is not finite, naming where it is.

    Every request passes this once, over all of its JSON (unknown fields and schemas
    included), so nothing downstream (a database driver, a provider's encoder, the
    response) meets such a value. ASCII strings, most of a body, cost one ``isascii``.
    A tool call's ``arguments`` is JSON in a string, which adapters parse and send on:
    where it could hide such a value (an escape), its JSON is checked too.
    """
    try:
        found = _first_invalid(body)
        if found is None:
            found = _invalid_arguments(body.get("messages"))
    except RecursionError:
        raise InvalidRequestError("The request body is nested too deeply.") from None
    if found is None:
        return
    reason, path = found
    param = _param_of(path)
    raise InvalidRequestError(f"Invalid '{param or 'body'}': {reason}.", param=param or None)


def _invalid_arguments(messages: Any) -> tuple[str, list[str | int]] | None:
    """The first tool call whose ``arguments`` JSON holds an invalid value, if any."""
    if type(messages) is not list:
        return None
    for m, message in enumerate(messages):
        calls = message.get("tool_calls") if type(message) is dict else None
        if type(calls) is not list:
            continue
        for c, call in enumerate(calls):
            function = call.get("function") if type(call) is dict else None
            arguments = function.get("arguments") if type(function) is dict else None
            if type(arguments) is not str or not any(
                hint in arguments for hint in ("\\u", "NaN", "Infinity")
            ):
                continue
            try:
                found = _first_invalid(json.loads(arguments))
            except ValueError:  # not JSON: the provider says so, or forwards it as text
                continue
            if found is not None:
                reason, inner = found
                at = f"its JSON at '{_param_of(inner)}'" if inner else "its JSON"
                return f"{at} {reason}", ["arguments", "function", c, "tool_calls", m, "messages"]
    return None


_LONE_SURROGATE = "contains a lone UTF-16 surrogate, which is not a Unicode character"
_NOT_FINITE = "must be a finite number"


def _first_invalid(value: Any) -> tuple[str, list[str | int]] | None:
    """The first invalid value below ``value``: its reason and its path, innermost first
    (built only on the way out of a failure, so a valid body allocates nothing).

    Written for speed: this runs over every value of every request (about 3 µs for a
    1.3 KB chat body), so it checks strings inline and recurses only into containers.
    """
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is str and not (key.isascii() or _encodable(key)):
                return "has a key that " + _LONE_SURROGATE, []
            kind = type(item)
            if kind is str:
                if item.isascii() or _encodable(item):
                    continue
                return _LONE_SURROGATE, [key]
            if kind is dict or kind is list or kind is float:
                found = _first_invalid(item)
                if found is not None:
                    found[1].append(key)
                    return found
    elif kind is list:
        for index, item in enumerate(value):
            kind = type(item)
            if kind is str:
                if item.isascii() or _encodable(item):
                    continue
                return _LONE_SURROGATE, [index]
            if kind is dict or kind is list or kind is float:
                found = _first_invalid(item)
                if found is not None:
                    found[1].append(index)
                    return found
    elif kind is float and not math.isfinite(value):
        return _NOT_FINITE, []
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _param_of(path: list[str | int]) -> str:
    """OpenAI's spelling of a field's place: ``messages[1].content[0].text``; a key that
    is not a plain name is quoted (``metadata["a.b"]``)."""
    param = ""
    for step in reversed(path):
        if isinstance(step, int):
            param += f"[{step}]"
        elif _NAME.fullmatch(step):
            param += ("." if param else "") + step
        else:
            param += "[" + json.dumps(step, ensure_ascii=False) + "]"
    return param
