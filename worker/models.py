"""The job contract: what producers enqueue and what workers store, as pydantic models.

Producers validate with these before anything reaches Redis; workers validate the same
payload again (another language may have produced it) and turn a failure into a failed
`JobResult` naming the field. Everything here round-trips through JSON.

Job kinds are registered once, in JOB_KINDS (`@job_kind`): serde's validation, the worker's
function list, `Producer.enqueue` and the CLI's flags are all derived from these classes.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from . import gemini

Status = Literal["succeeded", "failed"]

IMAGE_MIME_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]+);base64,(?P<data>.*)$", re.DOTALL)
# Labels are for metrics and logs: keep them short and tame.
_SOURCE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# What reaches Redis keys, logs and metrics from a producer: a documented charset and length.
JOB_ID_CHARS = "letters, digits and _ . : - @ / + ="
JOB_ID = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,128}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,127}$")
# No model writes more than this in one answer; MAX_OUTPUT_TOKENS is the configured ceiling.
MAX_TOKENS_CEILING = 2_000_000


def check_image_url(url: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> str:
    """An https/http URL, or a base64 `data:` URL of a supported type within the size limit."""
    if url.startswith(("https://", "http://")):
        return url
    match = _DATA_URL.match(url)
    if not match:
        raise ValueError("must be an http(s) URL or a data:image/<type>;base64,<data> URL")
    if match["mime"] not in IMAGE_MIME_TYPES:
        raise ValueError(f"image type {match['mime']!r} is not supported; use one of {', '.join(IMAGE_MIME_TYPES)}")
    try:
        raw = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data URL is not valid base64") from None
    if len(raw) > max_bytes:
        raise ValueError(f"image is {len(raw)} bytes, over the {max_bytes}-byte limit")
    return url


def check_job_id(job_id: object) -> str:
    """A job id is 1-128 characters of JOB_ID_CHARS: it names Redis keys and appears in logs."""
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise ValueError(f"must be 1-128 characters of {JOB_ID_CHARS}, not {shown(job_id)}")
    return job_id


def _model_name(v: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError("must name a model, e.g. gpt-4.1")
    if not MODEL_NAME.match(v):
        raise ValueError(f"must be 1-128 characters of letters, digits and _ . : - @ / +, not {shown(v)}")
    return v


def shown(value: object, limit: int = 40) -> str:
    """A value quoted for an error message: escaped and cut, whatever it holds."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


# Strict scalars: no bool-as-int, no numbers or booleans from strings; a JSON type means what it says.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # an integer is a number too
Bool = Annotated[bool, Strict()]
ModelName = Annotated[str, AfterValidator(_model_name)]
Text = Annotated[str, AfterValidator(_not_blank)]
ImageRef = Annotated[str, AfterValidator(check_image_url)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Model):
    url: ImageRef
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Model):
    type: Literal["text"]
    text: Text


class ImagePart(_Model):
    type: Literal["image_url"]
    # AIsa's OpenAPI file also allows a bare string here.
    image_url: ImageURL | ImageRef


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    # Extra keys (name, tool_calls, tool_call_id, function_call) pass through to the gateway.
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    @model_validator(mode="after")
    def _content_present(self) -> Message:
        if self.role in ("system", "user"):
            if self.content is None:
                raise ValueError(f"a {self.role} message needs content")
            if not (self.content.strip() if isinstance(self.content, str) else self.content):
                raise ValueError(f"a {self.role} message's content must not be empty")
        return self


class ChatParams(_Model):
    """The sampling parameters of the skill's chat call, passed through to the gateway."""

    temperature: Float | None = Field(None, ge=0, le=2)
    max_tokens: Int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    top_p: Float | None = Field(None, ge=0, le=1)
    frequency_penalty: Float | None = Field(None, ge=-2, le=2)
    presence_penalty: Float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = Field(None, description="a stop sequence (repeatable)")
    stream: Bool = Field(False, description="stream from the gateway (records time-to-first-token)")
    tools: list[dict[str, Any]] | None = Field(None, description="tools, as a JSON array")
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = Field(None, description="legacy functions, as a JSON array")
    function_call: str | dict[str, Any] | None = None

    def request_params(self) -> dict[str, Any]:
        """The parameters as the gateway wants them (unset ones left out)."""
        params = self.model_dump(include=set(ChatParams.model_fields), exclude_none=True)
        if not params.get("stream"):
            params.pop("stream", None)
        return params


class JobBase(ChatParams):
    """What every job kind shares. A kind is a subclass with a `kind` literal, registered with
    `@job_kind`: producers, the CLI, serde and the worker's function list all read JOB_KINDS."""

    kind: str
    source: str | None = Field(None, description="who is asking: a short label for spend by producer")
    bulk: Bool = Field(
        False,
        description="a bulk job (batch lines are): it waits behind interactive jobs for a worker slot and "
        "never books rate-limit slots ahead of them",
    )
    enqueued_at: datetime | None = None

    @field_validator("source")
    @classmethod
    def _tame_source(cls, v: str | None) -> str | None:
        if v is not None and not _SOURCE.match(v):
            raise ValueError("must be 1-64 characters of letters, digits and _ . : -")
        return v

    def build_messages(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def wait_limit(self, default: float) -> float:
        """Longest wait in place for a rate-limited model."""
        return default


class RoutedJob(JobBase):
    """A job answered by one model: the first of its chain (`model`, then fallbacks) that succeeds."""

    model: ModelName
    fallbacks: list[ModelName] | None = Field(
        None,
        max_length=16,
        json_schema_extra={"cli_split": ","},
        description="models to try next, comma-separated (overrides FALLBACKS; '' for none)",
    )
    max_wait_s: Float | None = Field(
        None,
        ge=0,
        json_schema_extra={"cli_flag": "--max-wait"},
        description="longest wait in seconds for a rate-limited model (default MAX_WAIT_S)",
    )
    gemini_native: Bool = Field(
        False,
        description="call Gemini models (ids starting with 'gemini') of the chain on their native "
        "generateContent endpoint; other models, and streams, use chat/completions",
    )

    def wait_limit(self, default: float) -> float:
        return default if self.max_wait_s is None else self.max_wait_s

    @model_validator(mode="after")
    def _native_sendable(self) -> RoutedJob:
        """A gemini_native job must translate to Gemini's format (no tools, images inline)."""
        if self.gemini_native:
            try:
                gemini.request_body({"messages": self.build_messages(), **self.request_params()})
            except ValueError as exc:
                # a ValidationError raised here keeps its location: the error names the flag
                detail = InitErrorDetails(
                    type=PydanticCustomError("value_error", "{reason}", {"reason": str(exc)}),
                    loc=("gemini_native",),
                    input=True,
                )
                raise ValidationError.from_exception_data(type(self).__name__, [detail]) from None
        return self


JOB_KINDS: dict[str, type[JobBase]] = {}
_J = TypeVar("_J", bound=JobBase)


def job_kind(cls: type[_J]) -> type[_J]:
    """Register a job kind: its `kind` default is the name producers enqueue and workers run."""
    JOB_KINDS[cls.model_fields["kind"].default] = cls
    return cls


@job_kind
class ChatJob(RoutedJob):
    kind: Literal["chat"] = "chat"
    messages: list[Message] = Field(min_length=1)

    def build_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


@job_kind
class VisionJob(RoutedJob):
    kind: Literal["vision"] = "vision"
    image: ImageRef = Field(description="http(s) URL, data URL or local file")
    prompt: Text = Field(min_length=1)
    system: str | None = Field(None, description="system prompt")
    detail: Literal["auto", "low", "high"] | None = None

    def build_messages(self) -> list[dict[str, Any]]:
        image_url: dict[str, Any] = {"url": self.image}
        if self.detail:
            image_url["detail"] = self.detail
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        messages.append(
            {
                "role": "user",
                "content": [{"type": "text", "text": self.prompt}, {"type": "image_url", "image_url": image_url}],
            }
        )
        return messages


@job_kind
class CompareJob(JobBase):
    """The same question to several models at once, no fallbacks."""

    kind: Literal["compare"] = "compare"
    models: list[ModelName] = Field(min_length=1, max_length=16)
    messages: list[Message] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists a model twice")
        return v

    def build_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ErrorInfo(BaseModel):
    """Why a job or an attempt failed. `type` is a bounded error class (see worker.errors)."""

    type: str
    message: str
    status: int | None = None
    code: str | None = None
    field: str | None = None
    request_id: str | None = Field(None, description="the gateway's id for the failed request")


class Attempt(BaseModel):
    """One real upstream call. Recorded once, under the job id and `call_id`, as soon as it ends."""

    model: str
    ok: bool
    latency_s: float
    error: ErrorInfo | None = None
    cost: float | None = None
    run: int = Field(1, description="which run of the job made the call (arq's job_try)")
    call_id: str | None = None
    at: float | None = Field(None, description="UNIX time the call started")
    waited_s: float = Field(0.0, description="time waited before it (shared rate limit, backoff)")


CostSource = Literal["gateway", "price_table", "unknown"]


class Answer(BaseModel):
    """What a model said and what it cost: the shape shared by the client's completion, each
    entry of a compare job and the job result."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    cost: float | None = Field(None, description="USD; None when unknown")
    cost_source: CostSource = "unknown"
    credits_remaining: float | None = None
    latency_s: float | None = None
    ttft_s: float | None = None


ANSWER_FIELDS: set[str] = set(Answer.model_fields)


class ModelAnswer(Answer):
    """One model's answer: the whole result of a routed job, one entry of a compare job."""

    model: str
    status: Status
    error: ErrorInfo | None = None


class JobResult(Answer):
    """What a worker stores under `llm-router:result:<job_id>` (JSON)."""

    job_id: str
    kind: str | None = None
    status: Status
    source: str | None = None
    model: str | None = Field(None, description="the model that answered")
    attempts: list[Attempt] = Field([], description="every upstream call of every run, in order")
    runs: int = 1
    answers: list[ModelAnswer] | None = Field(None, description="compare jobs: one entry per model")
    error: ErrorInfo | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


def describe_validation_error(exc: ValidationError) -> tuple[str, str]:
    """(field path, message) of the most specific problem, e.g. ("temperature", "Input should be <= 2")."""
    err = max(exc.errors(), key=lambda e: len(e["loc"]))
    # Drop pydantic's union-branch tags ("str", "list[...]", "ImageURL", "chat") from the path.
    loc = ".".join(
        str(p)
        for p in err["loc"]
        if not (isinstance(p, str) and ("[" in p or p[:1].isupper() or p in ("str", *JOB_KINDS)))
    )
    return loc or "job", err["msg"].removeprefix("Value error, ")
