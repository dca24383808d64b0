"""The configured bounds on a job, checked by producers before anything reaches Redis and by
workers for records that other writers made: the length of its lists (tools, stop, messages,
content parts), its size, its depth, the max_tokens and max_completion_tokens ceiling and the
model's context window. (The job contract, worker.contract.models, bounds each field on
its own.)"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..calls import egress
from . import routes
from .models import ChatJob, CompareJob, ImagePart, JobBase, Message, RoutedJob, VisionJob, shown
from .settings import Settings

# Images a job may carry: each is bounded by MAX_IMAGE_BYTES, and they do not count towards
# MAX_JOB_BYTES, so their number is bounded too.
MAX_IMAGES = 16


def inline_images(job: JobBase) -> list[str]:
    """The job's inline (data URL) images, as the validated messages hold them."""
    return [url for url in _images(job) if url.startswith("data:")]


def _images(job: JobBase) -> list[str]:
    """Every image of the job: data URLs and http(s) URLs, read from the validated job (its
    messages' content parts, a vision job's image), not from a dump of its messages."""
    if isinstance(job, VisionJob):
        return [job.image]
    if not isinstance(job, ChatJob | CompareJob) or type(job) not in (ChatJob, CompareJob):
        return _urls(job.build_messages())  # another kind, a subclass too: what it sends
    messages: list[Message] = job.messages  # what these two send: their messages, dumped
    urls = []
    for message in messages:
        content = getattr(message, "content", None)
        for part in content if isinstance(content, list) else []:
            if isinstance(part, ImagePart):
                ref = part.image_url
                urls.append(ref if isinstance(ref, str) else ref.url)
    return urls


def _urls(messages: list[dict[str, Any]]) -> list[str]:
    """The image URLs of messages as they are sent."""
    urls = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            ref = part.get("image_url") if isinstance(part, dict) else None
            url = ref.get("url") if isinstance(ref, dict) else ref
            if isinstance(url, str):
                urls.append(url)
    return urls


def _image_url_problem(urls: list[str], settings: Settings) -> str | None:
    """An image URL the upstream would fetch from this side's own network (worker.calls.egress)."""
    if settings.image_urls_allow_private:
        return None
    for url in urls:
        if not url.startswith("data:") and (why := egress.image_url_problem(url)):
            return (
                f"the URL {shown(url)}: {why}: refused unless IMAGE_URLS_ALLOW_PRIVATE=true "
                "(a self-hosted upstream would fetch it); send the image inline (a data URL)"
            )
    return None


def problem(job: JobBase, settings: Settings, record_bytes: int, routes_known: bool = True) -> tuple[str, str] | None:
    """(field, what is wrong and how to fix it), or None when the job is within bounds.
    `record_bytes`: the size of the job's record, its inline images included. `routes_known`:
    a route these settings do not know is refused (else left to the worker: worker.contract.routes)."""
    # the cheap checks first: counts, then the size; the depth walk only on a job of bounded size
    counted = count_problem(job, settings)
    if counted:
        return counted
    urls = _images(job)  # (read once: every image check below takes them)
    images = [url for url in urls if url.startswith("data:")]
    size = record_bytes - sum(len(u) for u in images)
    if size > settings.max_job_bytes:
        return "job", (
            f"is {size} bytes (inline images left out), over MAX_JOB_BYTES={settings.max_job_bytes}: "
            "shorten the messages or split the job"
        )
    deep = depth_problem(job, settings.max_json_depth)
    if deep:
        return deep
    route_problem = routes.problem(job, settings, routes_known)
    if route_problem:
        return route_problem
    if len(images) > MAX_IMAGES:
        return "job", f"carries {len(images)} images, over {MAX_IMAGES}: split it"
    if why := _image_url_problem(urls, settings):
        return "image", why
    for url in images:
        image_bytes = _decoded_size(url)
        if image_bytes > settings.max_image_bytes:
            return "image", (
                f"an image is {image_bytes} bytes, over MAX_IMAGE_BYTES={settings.max_image_bytes}: send a smaller one"
            )
    for field in ("max_tokens", "max_completion_tokens"):
        tokens = getattr(job, field)
        if tokens is None:
            continue
        if tokens > settings.max_output_tokens:
            return field, f"{tokens} is over MAX_OUTPUT_TOKENS={settings.max_output_tokens}: ask for fewer"
        for model in _models(job):
            context = settings.model_context.get(model)
            if context is not None and tokens >= context:
                return field, f"{tokens} does not fit {model}'s context window of {context} tokens: ask for fewer"
    return None


def count_problem(job: JobBase, settings: Settings) -> tuple[str, str] | None:
    """(field, what is wrong) for a list of the job longer than its setting allows: tools and
    functions (MAX_TOOLS), stop sequences (MAX_STOP), messages (MAX_MESSAGES), the content parts
    of one message (MAX_CONTENT_PARTS)."""
    messages = getattr(job, "messages", None) or []
    stop = job.stop if isinstance(job.stop, list) else []
    counts = [
        ("tools", len(job.tools or []), settings.max_tools, "MAX_TOOLS"),
        ("functions", len(job.functions or []), settings.max_tools, "MAX_TOOLS"),
        ("stop", len(stop), settings.max_stop, "MAX_STOP"),
        ("messages", len(messages), settings.max_messages, "MAX_MESSAGES"),
    ]
    for field, count, limit, name in counts:
        if count > limit:
            return field, f"holds {count} items, over {name}={limit}: send fewer"
    limit = settings.max_content_parts
    for i, message in enumerate(messages):
        content = getattr(message, "content", None)
        if isinstance(content, list) and len(content) > limit:
            return f"messages.{i}.content", f"holds {len(content)} parts, over MAX_CONTENT_PARTS={limit}: send fewer"
    return None


def _models(job: JobBase) -> list[str]:
    if isinstance(job, RoutedJob):
        return [job.model]
    if isinstance(job, CompareJob):
        return list(job.models)
    return []


def _decoded_size(data_url: str) -> int:
    data = data_url.partition(",")[2]
    return len(data) * 3 // 4 - data[-2:].count("=")


def depth_problem(job: JobBase, limit: int) -> tuple[str, str] | None:
    """(field, what is wrong) for the first field of `job` whose value nests arrays and objects
    more than `limit` deep (a record must stay writable as JSON: orjson stops at 254 levels)."""
    for name in job.model_fields_set:  # (a field left at its default holds None or a scalar)
        value = getattr(job, name)
        if value.__class__ not in _LEAVES and _deeper(value, limit):
            return name, f"nests arrays and objects over MAX_JSON_DEPTH={limit} levels deep: flatten it"
    return None


# Values with nothing inside (checked by type first: isinstance with pydantic's models is slow)
_LEAVES = frozenset({str, int, float, bool, type(None)})


def _deeper(value: Any, limit: int) -> bool:
    """Whether `value` (JSON as pydantic holds it: models, dicts, lists, scalars) nests
    containers more than `limit` deep; a loop over its levels, not recursion, whatever the depth."""
    level, depth = [value], 1
    while level:
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                children: Any = item.values()
            elif isinstance(item, (list, tuple)):
                children = item
            elif isinstance(item, BaseModel):
                children = [*item.__dict__.values(), *(item.__pydantic_extra__ or {}).values()]
            else:
                continue  # a datetime, or another value with nothing inside
            if depth > limit:
                return True
            for child in children:
                if child.__class__ not in _LEAVES:
                    below.append(child)
        level, depth = below, depth + 1
    return False
