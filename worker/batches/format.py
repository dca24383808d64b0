"""Batch lines in OpenAI's Batch API format: reading and validating the input, a request body
as a job of the contract, the batch options, and the output lines in OpenAI's shape. The batch
store (worker.batches.store) writes what this checks; producers.batches is the public face.

A line is OpenAI's `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`;
the body is validated by the job contract (worker.contract.models) with the same refusals and words as
`Producer.chat`. Our own options go under `body.llm_router` (fallbacks, max_wait_s,
gemini_native, source). `url: "/v1/llm-router/compare"` with `body.models` is a compare line.

The input is read as a stream and validated whole before anything reaches Redis: a batch with
an invalid line is refused (`BatchRejected`, every bad line with its number, param and
message) unless `skip_invalid`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypedDict

import orjson
from pydantic import ValidationError

from ..contract.models import JOB_KINDS, JobBase, JobResult, check_callback_url, describe_validation_error, shown
from ..contract.records import JobRejected
from ..outputs import callbacks
from . import record as wb
from .record import BatchError

# What a line's job is written as: (payload, the arq record), or JobRejected (worker.contract.records.JobRecords.record)
RecordOf = Callable[[JobBase, int], tuple[dict[str, Any], bytes]]

# Longest custom_id; at most this many refused lines are kept in a batch record (all are reported).
MAX_CUSTOM_ID = 512
MAX_ERRORS_KEPT = 1000
MAX_METADATA = 16
# Options of ours a line may give under body.llm_router, by kind.
EXTRAS_KEY = "llm_router"
EXTRAS = {"chat": ("fallbacks", "max_wait_s", "gemini_native", "source", "cache"), "compare": ("source", "cache")}
LINE_KEYS = ("custom_id", "method", "url", "body")

Line = bytes | str | dict[str, Any]
Source = str | os.PathLike[str] | Iterable[Line]


class BatchRejected(ValueError):
    """The input was refused; nothing was enqueued and nothing was written to Redis.
    `errors` holds every bad line (OpenAI's `{code, line, message, param}`)."""

    def __init__(self, errors: list[BatchError], lines: int) -> None:
        self.errors = errors
        self.lines = lines
        first = errors[0]
        where = f"line {first.line}: " if first.line else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"batch refused, nothing was enqueued: {where}{first.message}{more}")


class LineError(Exception):
    """One refused line (or request body): OpenAI's error `code`, the `message` and the `param`
    it names (`body.<field>` for a field of the request body)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


class TooLarge:
    def __init__(self, size: int) -> None:
        self.size = size


class SubmitOptions(TypedDict, total=False):
    """What `Batches.submit` and `Batches.create` take besides the source."""

    completion_window: str
    metadata: dict[str, str] | None
    skip_invalid: bool
    endpoint: str | None
    batch_id: str | None
    budget_usd: float | None
    callback_url: str | None


class Checked:
    """What validation found: the endpoint, valid lines (and their models), refused lines."""

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint
        self.valid = 0
        self.lines = 0
        self.models: Counter[str] = Counter()
        self.errors: list[BatchError] = []


def check_lines(
    lines: Iterator[tuple[int, Line | TooLarge]],
    spool: IO[bytes],
    endpoint: str | None,
    skip: bool,
    record: RecordOf,
    max_line_bytes: int,
) -> Checked:
    """Validate every line, each job's `record` too (worker.contract.records: bounds, source); spool the
    valid ones' records; refuse (BatchRejected) if any is bad, unless `skip`."""
    checked = Checked(endpoint)
    seen: dict[str, int] = {}
    now_ms = int(time.time() * 1000)
    number = 0
    for number, item in lines:
        try:
            custom_id, job = parse_line(item, checked, seen, max_line_bytes)
            _payload, data = record(job, now_ms)
        except LineError as exc:
            checked.errors.append(BatchError(code=exc.code, line=number, message=exc.message, param=exc.param))
            continue
        except JobRejected as exc:
            param = "body" if exc.field == "job" else f"body.{exc.field}"
            checked.errors.append(BatchError(code="invalid_request", line=number, message=exc.message, param=param))
            continue
        seen[custom_id] = number
        model = wb.requested_model(job.model_dump(include={"model", "models"}))
        checked.models[model] += 1
        spool.write(orjson.dumps([number, custom_id, model]) + b"\t" + data + b"\n")
        checked.valid += 1
    checked.lines = number
    if checked.errors and not skip:
        raise BatchRejected(checked.errors, number)
    if not checked.valid:
        raise BatchRejected(checked.errors or [BatchError(code="empty_file", message="the input has no lines")], number)
    return checked


def parse_line(
    item: Line | TooLarge, checked: Checked, seen: dict[str, int], max_line_bytes: int
) -> tuple[str, JobBase]:
    """(custom_id, job) of one line, or a LineError naming the param and the fix."""
    if isinstance(item, TooLarge):
        raise LineError(
            "line_too_large",
            f"the line is {item.size} bytes, over BATCH_MAX_LINE_BYTES={max_line_bytes}: "
            "shorten it or send the image by URL",
        )
    obj = item if isinstance(item, dict) else json_line(item)
    if not isinstance(obj, dict):
        raise LineError("invalid_line", 'a line must be a JSON object {"custom_id", "method", "url", "body"}')
    for key in obj:
        if key not in LINE_KEYS:
            raise LineError(
                "invalid_line", f"{key!r} is not a field of a batch line: use custom_id, method, url, body", key
            )
    custom_id = obj.get("custom_id")
    if custom_id is None:
        raise LineError("missing_custom_id", "the line has no custom_id: give each line a unique id", "custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        raise LineError("invalid_custom_id", f"must be a string of 1-{MAX_CUSTOM_ID} characters", "custom_id")
    if custom_id in seen:
        raise LineError(
            "duplicate_custom_id",
            f"custom_id {custom_id!r} is already used on line {seen[custom_id]}: custom_ids must be unique",
            "custom_id",
        )
    if obj.get("method") != "POST":
        raise LineError("invalid_method", f'method must be "POST", not {obj.get("method")!r}', "method")
    url = obj.get("url")
    if url not in wb.ENDPOINTS:
        raise url_error(url)
    if checked.endpoint is None:
        checked.endpoint = url
    elif url != checked.endpoint:
        raise LineError(
            "invalid_url",
            f"every line of a batch uses the same url ({checked.endpoint}), this one {url}: split the file",
            "url",
        )
    kind = wb.ENDPOINTS[url]
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_body", "body must be a JSON object: the request's body (model, messages, ...)", "body")
    return custom_id, request_job(kind, body)


# ---------------------------------------------------------------- reading the input


def read_lines(source: Source, settings: Any) -> Iterator[tuple[int, Line | TooLarge]]:
    """(line number, line) from a path (read as a stream, a line at most BATCH_MAX_LINE_BYTES
    in memory) or an iterable; stops with a BatchRejected over BATCH_MAX_LINES / BATCH_MAX_BYTES."""
    max_line, max_lines, max_bytes = settings.batch_max_line_bytes, settings.batch_max_lines, settings.batch_max_bytes
    total = 0
    items = (
        _read_file(Path(source), max_line) if isinstance(source, (str, os.PathLike)) else _read_items(source, max_line)
    )
    for number, (item, size) in enumerate(items, start=1):
        total += size
        if number > max_lines:
            raise BatchRejected(
                [
                    BatchError(
                        code="too_many_lines", line=number, message=f"over BATCH_MAX_LINES={max_lines}: split the file"
                    )
                ],
                number,
            )
        if total > max_bytes:
            raise BatchRejected(
                [
                    BatchError(
                        code="file_too_large", line=number, message=f"over BATCH_MAX_BYTES={max_bytes}: split the file"
                    )
                ],
                number,
            )
        yield number, item


def _read_file(path: Path, max_line: int) -> Iterator[tuple[Line | TooLarge, int]]:
    with path.open("rb") as f:
        while raw := f.readline(max_line + 2):  # a line, its \r\n included, or the start of a longer one
            size = len(raw)
            if len(raw) == max_line + 2 and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line, a chunk at a time
                    raw = f.readline(1 << 20)
                    size += len(raw)
                yield TooLarge(size), size
                continue
            content = raw.rstrip(b"\r\n")
            yield (TooLarge(size) if len(content) > max_line else content), size


def _read_items(items: Iterable[Line], max_line: int) -> Iterator[tuple[Line | TooLarge, int]]:
    for item in items:
        if isinstance(item, dict):
            size = content = len(json.dumps(item))
        else:
            item = item.rstrip(b"\r\n") if isinstance(item, bytes) else item.rstrip("\r\n")
            content = len(item) if isinstance(item, bytes) else len(item.encode())
            size = content + 1
        yield (TooLarge(size) if content > max_line else item), size


def json_line(item: bytes | str) -> Any:
    try:
        text = item.decode() if isinstance(item, bytes) else item
    except UnicodeDecodeError:
        raise LineError("invalid_json", "the line is not UTF-8 text") from None
    if not text.strip():
        raise LineError("empty_line", "the line is blank: remove it (one request a line)")
    try:
        return orjson.loads(text)
    except ValueError as exc:
        raise LineError("invalid_json", f"the line is not valid JSON ({exc})") from None


def request_job(kind: str, body: dict[str, Any], *, bulk: bool = True) -> JobBase:
    """A request body in OpenAI's shape (a batch line's, or `POST /v1/chat/completions`') as a
    job of the contract, our options under `llm_router`; or a LineError naming `body.<field>`.
    A batch line is a bulk job: it waits in the bulk lane and never holds up interactive jobs."""
    body = dict(body)
    extras = body.pop(EXTRAS_KEY, None) or {}
    if not isinstance(extras, dict):
        raise LineError("invalid_request", "must be an object of llm-router options", f"body.{EXTRAS_KEY}")
    for name in extras:
        if name not in EXTRAS[kind]:
            raise LineError(
                "invalid_request",
                f"{name!r} is not an llm-router option of a {kind} line: use {', '.join(EXTRAS[kind])}",
                f"body.{EXTRAS_KEY}.{name}",
            )
    if "callback_url" in body or "callback_url" in extras:
        at = f"body.{EXTRAS_KEY}.callback_url" if "callback_url" in extras else "body.callback_url"
        raise LineError(
            "invalid_request",
            "is not taken here: a batch's lines report through the batch's callback_url (sent when it ends), "
            "a job's goes in its body on POST /v1/jobs",
            at,
        )
    for name in ("kind", "enqueued_at", *EXTRAS[kind]):
        if name in body:
            where = f"body.{EXTRAS_KEY}.{name}" if name in EXTRAS[kind] else None
            fix = f": it goes under {where}" if where else ""
            raise LineError("invalid_request", f"{name!r} is not a request parameter{fix}", f"body.{name}")
    if "max_completion_tokens" in body:  # OpenAI's newer name for max_tokens
        if "max_tokens" in body:
            raise LineError("invalid_request", "give max_tokens or max_completion_tokens, not both", "body.max_tokens")
        body["max_tokens"] = body.pop("max_completion_tokens")
    try:
        return JOB_KINDS[kind].model_validate({**body, **extras, "bulk": bulk})
    except ValidationError as exc:
        field, message = describe_validation_error(exc)
        top = field.split(".")[0]
        param = f"body.{EXTRAS_KEY}.{field}" if top in extras else "body" if field == "job" else f"body.{field}"
        raise LineError("invalid_request", message, param) from None


def request_schema(kind: str, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON schema of what `request_job(kind, ...)` accepts: the job's fields as OpenAI's
    request body (no `kind`, `enqueued_at` or `bulk`), our options under `llm_router`, and
    max_tokens or max_completion_tokens, not both. Its `$defs` are the job model's."""
    schema = JOB_KINDS[kind].model_json_schema(ref_template=ref_template)
    properties = schema["properties"]
    extras = {name: properties.pop(name) for name in EXTRAS[kind] if name in properties}
    for name in ("kind", "enqueued_at", "bulk", "callback_url"):  # a job's callback_url: POST /v1/jobs only
        properties.pop(name, None)
    properties[EXTRAS_KEY] = {
        "type": "object",
        "properties": extras,
        "additionalProperties": False,
        "description": "llm-router's options",
    }
    schema["required"] = [name for name in schema.get("required", []) if name in properties]
    schema["title"] = f"{schema.get('title', kind)}Request"
    if "max_completion_tokens" in properties:
        schema["not"] = {"required": ["max_tokens", "max_completion_tokens"]}
    return schema


def url_error(url: Any) -> LineError:
    return LineError("invalid_url", f"url must be {' or '.join(wb.ENDPOINTS)}, not {url!r}", "url")


def check_callback(url: str, settings: Any) -> None:
    try:
        problem = callbacks.refusal(check_callback_url(url), settings)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise BatchRejected([BatchError(code="invalid_callback_url", message=problem, param="callback_url")], 0)


# Each option of a batch create: the types it takes (None: it may be left out), what it is, its
# refusal's code. Checked first, so a wrong type is refused naming the field, never a TypeError.
_OPTION_TYPES: dict[str, tuple[tuple[type, ...], str, str]] = {
    "completion_window": ((str,), "a string such as 24h", "invalid_completion_window"),
    "metadata": ((dict, type(None)), "an object of string pairs", "invalid_metadata"),
    "skip_invalid": ((bool,), "true or false", "invalid_skip_invalid"),
    "endpoint": ((str, type(None)), f"a string: {' or '.join(wb.ENDPOINTS)}", "invalid_url"),
    "batch_id": ((str, type(None)), "a string: batch_<32 hex digits>", "invalid_batch_id"),
    "budget_usd": ((int, float, type(None)), "a number of USD", "invalid_budget"),
    "callback_url": ((str, type(None)), "a string: an https:// URL", "invalid_callback_url"),
}


def check_options(**options: Any) -> None:
    """BatchRejected naming the first option of `options` whose value has the wrong type (a
    number for completion_window, a list for metadata...)."""
    for name, value in options.items():
        types, what, code = _OPTION_TYPES[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            message = f"{name} must be {what}, not {type(value).__name__} {shown(value)}"
            raise BatchRejected([BatchError(code=code, message=message, param=name)], 0)


def window_seconds(window: str, longest_s: float) -> float:
    """The window in seconds, at most BATCH_MAX_WINDOW_S (checked before anything is written)."""
    try:
        seconds = wb.window_seconds(window)
        if not seconds <= longest_s:
            raise ValueError(
                f"{window!r} is over BATCH_MAX_WINDOW_S={longest_s:g} seconds: use a shorter window "
                "(a number and s, m, h or d: 24h, 90m)"
            )
        return seconds
    except ValueError as exc:
        raise BatchRejected(
            [BatchError(code="invalid_completion_window", message=str(exc), param="completion_window")], 0
        ) from None


def budget_of(budget_usd: Any) -> float | None:
    """A batch's budget: a finite number of USD, 0 or more (0: only free models run)."""
    if budget_usd is None:
        return None
    if isinstance(budget_usd, bool) or not isinstance(budget_usd, (int, float)) or not 0 <= budget_usd < math.inf:
        message = f"budget_usd must be a number of USD, 0 or more, not {budget_usd!r}"
        raise BatchRejected([BatchError(code="invalid_budget", message=message, param="budget_usd")], 0)
    return float(budget_usd)


def metadata_of(metadata: dict[str, str] | None) -> dict[str, str] | None:
    if not metadata:
        return None
    problem = None
    if len(metadata) > MAX_METADATA:
        problem = f"at most {MAX_METADATA} pairs, not {len(metadata)}"
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str) or not 0 < len(k) <= 64 or len(v) > 512:
            problem = f"{k!r}: keys are strings of 1-64 characters, values strings of up to 512"
    if problem:
        raise BatchRejected([BatchError(code="invalid_metadata", message=problem, param="metadata")], 0)
    return dict(metadata)


# ---------------------------------------------------------------- the output shape


def output_line(job_id: str, custom_id: str, result: JobResult) -> dict[str, Any]:
    """One line of OpenAI's output (succeeded) or error file (failed), plus `llm_router`: what
    the service adds (the model that answered, calls, runs, cost, latency)."""
    extra = {
        "model": result.model,
        "attempts": len(result.attempts),
        "runs": result.runs,
        "cost": result.cost,
        "cost_source": result.cost_source,
        "cached": result.cached,
        "latency_s": result.latency_s,
    }
    line: dict[str, Any] = {"id": job_id, "custom_id": custom_id, "response": None, "error": None}
    if result.status == "succeeded":
        call_id = next((a.call_id for a in reversed(result.attempts) if a.ok), None)
        line["response"] = {"status_code": 200, "request_id": call_id, "body": completion_body(job_id, result)}
    else:
        error = result.error
        code, message = (error.type, error.message) if error else ("failed", "the request failed")
        if error is not None and error.status:  # the gateway answered: its response, as OpenAI gives it
            line["response"] = {
                "status_code": error.status,
                "request_id": error.request_id,
                "body": {"error": {"message": error.message, "type": error.type, "code": error.code}},
            }
        line["error"] = {"code": code, "message": message}
    line[EXTRAS_KEY] = extra
    return line


def completion_body(job_id: str, result: JobResult) -> dict[str, Any]:
    """A succeeded job's answer as OpenAI's chat completion (`usage.cost` included); a compare
    job's as our `llm_router.compare` object."""
    created = int(result.finished_at.timestamp()) if result.finished_at else int(time.time())
    prompt, completion = wb.tokens(result)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost": result.cost,
    }
    if result.answers is not None:  # a compare line: our extension of the shape
        return {
            "id": f"cmp-{job_id}",
            "object": "llm_router.compare",
            "created": created,
            "answers": [
                a.model_dump(
                    include={"model", "status", "content", "finish_reason", "usage", "cost", "latency_s", "error"}
                )
                for a in result.answers
            ],
            "usage": usage,
        }
    message: dict[str, Any] = {"role": "assistant", "content": result.content}
    if result.tool_calls:
        message["tool_calls"] = result.tool_calls
    if result.function_call:
        message["function_call"] = result.function_call
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created,
        "model": result.model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": usage,
    }


# ---------------------------------------------------------------- a file of prompts


def prompt_lines(
    path: str | os.PathLike[str], template: str, model: str, *, system: str | None = None, **params: Any
) -> Iterator[dict[str, Any]]:
    """Batch lines from a CSV (a header row; `template` names its columns, e.g. "Summarise:
    {text}") or a text file (one prompt a line, `{text}`; blank lines skipped). `custom_id` is
    the row's `id` column, else its row number. `params`: body parameters (max_tokens, ...).
    A template naming a column the file lacks is a ValueError here, before any line is read."""
    path = Path(path)
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            columns = next(csv.reader(f), [])
        missing = names - set(columns)
        if missing:
            raise ValueError(
                f"the template names {', '.join(sorted(missing))}, not a column of {path.name} "
                f"(columns: {', '.join(columns)})"
            )
    elif names - {"text"}:
        raise ValueError("a text file has one prompt a line: the template can name only {text}")
    head = [{"role": "system", "content": system}] if system else []
    return _prompt_lines(path, template, model, head, params)


def _prompt_lines(
    path: Path, template: str, model: str, head: list[dict[str, str]], params: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        csv_file = path.suffix.lower() == ".csv"
        rows: Iterable[dict[str, str]] = csv.DictReader(f) if csv_file else ({"text": t.rstrip("\r\n")} for t in f)
        for number, row in enumerate(rows, start=1):
            if not csv_file and not row["text"].strip():
                continue  # a blank line of a text file is no prompt
            custom_id = (row.get("id") or "").strip() or str(number)
            messages = [*head, {"role": "user", "content": template.format(**row)}]
            body = {"model": model, "messages": messages, **params}
            yield {"custom_id": custom_id, "method": "POST", "url": wb.ENDPOINT_CHAT, "body": body}
