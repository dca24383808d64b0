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
from urllib.parse import urlsplit

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

from ..calls import gemini

Status = Literal["succeeded", "failed"]

IMAGE_MIME_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]+);base64,(?P<data>.*)$", re.DOTALL)
# Labels are for metrics and logs: keep them short and tame.
SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
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


MAX_CALLBACK_URL = 2048
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


def check_callback_url(url: str) -> str:
    """An http(s) URL with a host and no user or password in it (it is stored and shown), at most
    MAX_CALLBACK_URL characters. Which hosts may be called is a setting (worker.outputs.webhooks)."""
    if len(url) > MAX_CALLBACK_URL:
        raise ValueError(f"is {len(url)} characters, over {MAX_CALLBACK_URL}")
    # urllib drops tabs and newlines where the sender's HTTP client refuses them: the URL checked
    # (and stored, and called) must be the one given
    if bad := _URL_UNSAFE.search(url):
        raise ValueError(f"has a space or control character ({shown(bad[0])} at {bad.start()}): percent-encode it")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"is not a URL: {shown(url)}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"must be an https:// (or http://) URL with a host, not {shown(url)}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user or password: the receiver checks the signature instead")
    return url


def callback_of(payload: Any) -> str | None:
    """A job payload's callback_url, if it has a valid one (a failed job's payload may be anything)."""
    url = payload.get("callback_url") if isinstance(payload, dict) else None
    try:
        return check_callback_url(url) if isinstance(url, str) else None
    except ValueError:
        return None


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
_IMAGE_REF = (
    r"^(https?://.*|data:image/(jpeg|png|gif|webp);base64,([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?)$"
)
# (each `pattern` only tells /openapi.json's readers, schemathesis included, what the validator accepts)
ModelName = Annotated[str, AfterValidator(_model_name), Field(json_schema_extra={"pattern": MODEL_NAME.pattern})]
Text = Annotated[str, AfterValidator(_not_blank), Field(json_schema_extra={"pattern": r"\S"})]
ImageRef = Annotated[str, AfterValidator(check_image_url), Field(json_schema_extra={"pattern": _IMAGE_REF})]
CallbackURL = Annotated[str, AfterValidator(check_callback_url)]


class _Model(BaseModel):
    # defer_build: a model's validator is built when first used, not at import: a CLI verb
    # imports every job kind and uses one (the worker builds them at start-up: worker.process.service)
    model_config = ConfigDict(extra="forbid", defer_build=True)


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


# A system, developer or user message has content (`_content_present`), in the schema too.
_CONTENT_REQUIRED: dict[str, Any] = {
    "if": {"properties": {"role": {"enum": ["system", "developer", "user"]}}},
    "then": {"required": ["content"], "properties": {"content": {"anyOf": [{"pattern": r"\S"}, {"minItems": 1}]}}},
}


class Message(BaseModel):
    # Extra keys (name, tool_calls, tool_call_id, function_call) pass through to the gateway.
    model_config = ConfigDict(extra="allow", json_schema_extra=_CONTENT_REQUIRED, defer_build=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    @model_validator(mode="after")
    def _content_present(self) -> Message:
        if self.role in ("system", "developer", "user"):
            if self.content is None:
                raise ValueError(f"a {self.role} message needs content")
            if not (self.content.strip() if isinstance(self.content, str) else self.content):
                raise ValueError(f"a {self.role} message's content must not be empty")
        return self


def _field_error(model: str, field: str, reason: str) -> ValidationError:
    """A ValidationError located at `field` (raised from a model validator, it keeps the location)."""
    detail = InitErrorDetails(
        type=PydanticCustomError("value_error", "{reason}", {"reason": reason}), loc=(field,), input=None
    )
    return ValidationError.from_exception_data(model, [detail])


def _response_format(v: dict[str, Any]) -> dict[str, Any]:
    kind = v.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise ValueError(f"type must be 'text', 'json_object' or 'json_schema', not {shown(kind)}")
    if kind == "json_schema":
        spec = v.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ValueError("a json_schema response format needs json_schema: {name, schema, strict}")
        if "schema" in spec and not isinstance(spec["schema"], dict):
            raise ValueError("json_schema.schema must be a JSON Schema object")
    return v


def _metadata(v: dict[str, str]) -> dict[str, str]:
    if len(v) > 16:
        raise ValueError(f"has {len(v)} pairs; at most 16")
    for key, value in v.items():
        if len(key) > 64 or len(value) > 512:
            raise ValueError(f"key {shown(key)}: keys are at most 64 characters, values at most 512")
    return v


ResponseFormat = Annotated[dict[str, Any], AfterValidator(_response_format)]
Metadata = Annotated[dict[str, str], AfterValidator(_metadata)]
LogitBias = dict[str, Annotated[int, Strict(), Field(ge=-100, le=100)]]


class StreamOptions(_Model):
    include_usage: Bool | None = None
    include_obfuscation: Bool | None = None


class ChatParams(_Model):
    """The parameters of OpenAI's chat completions (`openai.types.chat.completion_create_params`),
    passed through to the gateway: typed where the router reads them, objects forwarded as given."""

    temperature: Float | None = Field(None, ge=0, le=2)
    max_tokens: Int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    max_completion_tokens: Int | None = Field(
        None, ge=1, le=MAX_TOKENS_CEILING, description="most tokens to generate, reasoning included"
    )
    top_p: Float | None = Field(None, ge=0, le=1)
    frequency_penalty: Float | None = Field(None, ge=-2, le=2)
    presence_penalty: Float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = Field(None, description="a stop sequence (repeatable)")
    n: Int | None = Field(None, ge=1, le=128, description="choices to generate (each billed)")
    seed: Int | None = Field(None, description="best-effort deterministic sampling")
    response_format: ResponseFormat | None = Field(
        None, description='{"type":"json_object"} (JSON mode) or {"type":"json_schema","json_schema":{...}}'
    )
    logprobs: Bool | None = Field(None, description="return the log probabilities of the output tokens")
    top_logprobs: Int | None = Field(
        None, ge=0, le=20, description="most likely tokens per position (0-20; needs --logprobs)"
    )
    logit_bias: LogitBias | None = Field(None, description='{"token id": bias from -100 to 100}')
    stream: Bool = Field(False, description="stream from the gateway (records time-to-first-token)")
    stream_options: StreamOptions | None = Field(
        None, description='with --stream, e.g. {"include_obfuscation":false} (usage is always asked for)'
    )
    tools: list[dict[str, Any]] | None = Field(None, description="tools, as a JSON array")
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: Bool | None = Field(None, description="let the model call several tools at once")
    functions: list[dict[str, Any]] | None = Field(None, description="legacy functions, as a JSON array")
    function_call: str | dict[str, Any] | None = None
    user: str | None = Field(None, description="an end-user id (legacy; see --safety-identifier)")
    safety_identifier: str | None = Field(None, max_length=128, description="a stable, hashed end-user id")
    prompt_cache_key: str | None = Field(None, description="bucket similar requests for prompt caching")
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = Field(None, description='e.g. {"mode":"explicit"}')
    metadata: Metadata | None = Field(None, description='{"key": "value"}: at most 16 string pairs')
    store: Bool | None = Field(None, description="let the provider store the completion (distillation, evals)")
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[Literal["text", "audio"]] | None = Field(
        None, json_schema_extra={"cli_split": ","}, description="output types, comma-separated: text,audio"
    )
    audio: dict[str, Any] | None = Field(None, description='audio output, e.g. {"voice":"alloy","format":"wav"}')
    prediction: dict[str, Any] | None = Field(
        None, description='predicted output, e.g. {"type":"content","content":"..."}'
    )
    web_search_options: dict[str, Any] | None = Field(
        None, description='web search, e.g. {"search_context_size":"low"}'
    )
    moderation: dict[str, Any] | None = Field(None, description='moderation, e.g. {"model":"omni-moderation-latest"}')

    @model_validator(mode="after")
    def _paired(self) -> ChatParams:
        if self.top_logprobs is not None and self.logprobs is not True:
            raise _field_error(type(self).__name__, "top_logprobs", "is only allowed with logprobs: true")
        if self.stream_options is not None and not self.stream:
            raise _field_error(type(self).__name__, "stream_options", "is only allowed with stream: true")
        return self

    def request_params(self) -> dict[str, Any]:
        """The parameters as the gateway wants them (unset ones left out)."""
        params = self.model_dump(include=_CHAT_PARAMS, exclude_none=True)
        if not params.get("stream"):
            params.pop("stream", None)
        return params

    def output_tokens(self) -> int | None:
        """The most tokens one choice may produce: the smaller of max_tokens and
        max_completion_tokens, None when neither is set."""
        given = [t for t in (self.max_tokens, self.max_completion_tokens) if t is not None]
        return min(given) if given else None


# request_params' fields, built once (pydantic takes a set: a frozenset costs it more)
_CHAT_PARAMS: set[str] = set(ChatParams.model_fields)


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
    cache: Bool | None = Field(
        None,
        description="the response cache: --cache for this job's calls, --no-cache never "
        "(default: CACHE_MODE: temperature-0 calls)",
    )
    enqueued_at: datetime | None = None
    callback_url: CallbackURL | None = Field(
        None, description="POST the result here, signed, when the job ends (hosts: WEBHOOK_ALLOWED_HOSTS)"
    )

    @field_validator("source")
    @classmethod
    def _tame_source(cls, v: str | None) -> str | None:
        if v is not None and not SOURCE_NAME.match(v):
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
                raise _field_error(type(self).__name__, "gemini_native", str(exc)) from None
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
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="how closely the model looks at the image (OpenAI's image_url.detail)"
    )

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


class BudgetInfo(BaseModel):
    """Why a call did not fit a budget (error class `budget`; docs: Budgets), in USD."""

    scope: str = Field(description="global, source, model or batch")
    name: str = Field("", description="the source, model or batch id; '' for the global budget")
    day: str | None = Field(None, description="a daily budget's day (YYYY-MM-DD in BUDGET_TZ)")
    limit_usd: float
    spent_usd: float
    reserved_usd: float = Field(description="held by calls in flight")
    needed_usd: float = Field(description="this call's worst case")


class ErrorInfo(BaseModel):
    """Why a job or an attempt failed. `type` is a bounded error class (docs: Resilience and errors)."""

    type: str
    message: str
    status: int | None = None
    code: str | None = None
    field: str | None = None
    request_id: str | None = Field(None, description="the gateway's id for the failed request")
    budget: BudgetInfo | None = Field(None, description="error class `budget`: the scope and the amounts")


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


CostSource = Literal["gateway", "price_table", "unknown", "cache"]


class Choice(BaseModel):
    """One of the answer's choices (`n` > 1), with its token log probabilities (`logprobs`)."""

    index: int
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = Field(None, description='OpenAI\'s {"content": [{"token", "logprob", ...}]}')


class Answer(BaseModel):
    """What a model said and what it cost: the shape shared by the client's completion, each
    entry of a compare job and the job result. `content`, `tool_calls`, `function_call` and
    `finish_reason` are choice 0's; `choices` holds every choice when there are several or when
    they carry log probabilities."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None
    finish_reason: str | None = None
    choices: list[Choice] | None = None
    usage: Usage | None = None
    cost: float | None = Field(None, description="USD; None when unknown")
    cost_source: CostSource = "unknown"
    credits_remaining: float | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    cached: bool = Field(False, description="answered from the response cache: no call, cost 0")
    saved_cost: float | None = Field(None, description="a cached answer: USD its original call cost")


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
    route: str | None = Field(None, description="the route the job named as its model (`route:<name>`)")
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
