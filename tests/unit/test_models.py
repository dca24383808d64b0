"""The job contract: what is refused, with which field named, and what reaches the gateway."""

import base64

import pytest

from producers.api import JobRejected, build_messages, validate
from producers.images import ImageError, file_to_data_url, resolve_image
from worker.contract.models import ChatJob, CompareJob, JobResult, ModelAnswer, VisionJob

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def png_url(data: bytes = PNG) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("cls", "fields", "field", "words"),
    [
        (ChatJob, {"model": "gpt-4.1"}, "messages", "required"),
        (ChatJob, {"model": "gpt-4.1", "messages": []}, "messages", "at least 1"),
        (
            ChatJob,
            {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
            "temperature",
            "less than or equal to 2",
        ),
        (
            ChatJob,
            {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
            "max_tokens",
            "greater than or equal to 1",
        ),
        (ChatJob, {"model": " ", "messages": [{"role": "user", "content": "hi"}]}, "model", "must name a model"),
        (
            ChatJob,
            {"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role",
            "Input should be",
        ),
        (ChatJob, {"model": "m", "messages": [{"role": "user"}]}, "messages.0", "needs content"),
        (
            ChatJob,
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "source": "bad source!"},
            "source",
            "letters, digits",
        ),
        (CompareJob, {"models": [], "messages": [{"role": "user", "content": "hi"}]}, "models", "at least 1"),
        (CompareJob, {"models": ["a", "a"], "messages": [{"role": "user", "content": "hi"}]}, "models", "twice"),
        (
            VisionJob,
            {"model": "gpt-4o", "image": "data:image/png;base64,@@notbase64@@", "prompt": "p"},
            "image",
            "not valid base64",
        ),
        (
            VisionJob,
            {"model": "gpt-4o", "image": "data:image/tiff;base64,AAAA", "prompt": "p"},
            "image",
            "not supported",
        ),
        (VisionJob, {"model": "gpt-4o", "image": "ftp://host/x.png", "prompt": "p"}, "image", "http(s) URL"),
        (VisionJob, {"model": "gpt-4o", "image": "https://x/y.png", "prompt": ""}, "prompt", "at least 1"),
        (
            VisionJob,
            {"model": "gemini-2.0-flash", "image": "https://x/y.png", "prompt": "p", "gemini_native": True},
            "gemini_native",
            "takes images inline",
        ),
        (
            ChatJob,
            {
                "model": "gemini-2.0-flash",
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "gemini_native": True,
            },
            "gemini_native",
            "tools cannot be sent natively",
        ),
    ],
)
def test_bad_jobs_are_refused_naming_the_field(cls, fields, field, words):
    with pytest.raises(JobRejected) as info:
        validate(cls, **fields)
    assert info.value.field == field
    assert words in info.value.message


def test_image_part_inside_chat_messages_is_checked():
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}]
    with pytest.raises(JobRejected) as info:
        validate(ChatJob, model="gpt-4o", messages=bad)
    assert info.value.field.startswith("messages.0.content.0")
    good = [
        {"role": "user", "content": [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": png_url()}]}
    ]
    assert validate(ChatJob, model="gpt-4o", messages=good).messages[0].content[1].image_url == png_url()


def test_request_params_carry_every_seed_parameter_and_nothing_unset():
    job = ChatJob(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.7,
        max_tokens=100,
        top_p=0.9,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        stop=["END"],
        stream=True,
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="auto",
    )
    assert job.request_params() == {
        "temperature": 0.7,
        "max_tokens": 100,
        "top_p": 0.9,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "stop": ["END"],
        "stream": True,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
    }
    assert ChatJob(model="m", messages=[{"role": "user", "content": "x"}]).request_params() == {}


def test_vision_job_builds_a_multimodal_message():
    job = VisionJob(
        model="gpt-4o", image="https://example.com/cat.jpg", prompt="What is it?", system="Be brief", detail="low"
    )
    assert job.build_messages() == [
        {"role": "system", "content": "Be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
            ],
        },
    ]


def test_build_messages_orders_system_conversation_then_message():
    assert build_messages("q", [{"role": "assistant", "content": "a"}], "sys") == [
        {"role": "system", "content": "sys"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q"},
    ]


def test_local_image_becomes_a_data_url(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(PNG)
    assert file_to_data_url(path) == png_url()
    assert resolve_image(str(path)) == png_url()
    assert resolve_image("https://example.com/a.jpg") == "https://example.com/a.jpg"


def test_bad_local_images_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        file_to_data_url(tmp_path / "missing.png")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ImageError, match="not a PNG, JPEG, GIF or WebP"):
        file_to_data_url(text)
    big = tmp_path / "big.png"
    big.write_bytes(PNG + b"\x00" * 100)
    with pytest.raises(ImageError, match="over the 64-byte limit"):
        file_to_data_url(big, max_bytes=64)
    with pytest.raises(ImageError, match="over the 8-byte limit"):
        resolve_image(png_url(), max_bytes=8)


def test_result_round_trips_through_json():
    result = JobResult(
        job_id="j",
        kind="compare",
        status="succeeded",
        cost=0.5,
        answers=[ModelAnswer(model="a", status="succeeded", content="x", cost=0.5)],
    )
    assert JobResult.model_validate_json(result.model_dump_json()) == result


PNG_URL = "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()


@pytest.mark.parametrize(
    "job",
    [
        ChatJob(model="m", messages=[{"role": "user", "content": "no image"}]),
        ChatJob(
            model="m",
            messages=[
                {"role": "system", "content": "s"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
                        {"type": "image_url", "image_url": "https://example.com/a.png"},
                    ],
                },
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
            ],
        ),
        CompareJob(
            models=["a", "b"],
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}]}],
        ),
        VisionJob(model="m", image=PNG_URL, prompt="p", system="s", detail="high"),
        VisionJob(model="m", image="https://example.com/b.png", prompt="p"),
    ],
)
def test_the_bounds_read_the_images_a_job_sends(job):
    """worker.contract.bounds reads images from the validated job, not a dump of its messages: the
    same URLs, in the same order, as the messages sent."""
    from worker.contract import bounds

    assert bounds._images(job) == bounds._urls(job.build_messages())


def test_the_bounds_read_what_another_kind_sends_not_what_it_holds():
    """A kind other than chat and compare (here a subclass of ChatJob adding an image of its own
    when it builds its messages) is read from its built messages: its image is counted and checked."""
    from worker.contract import bounds

    class WithLogo(ChatJob):
        def build_messages(self):
            logo = {"type": "image_url", "image_url": {"url": "http://127.0.0.1/logo.png"}}
            return [*super().build_messages(), {"role": "user", "content": [logo]}]

    job = WithLogo(model="m", messages=[{"role": "user", "content": "hi"}])
    assert bounds._images(job) == ["http://127.0.0.1/logo.png"]


def _depth(value) -> int:
    """How deep containers nest in `value` (0 for a scalar), recursively: the reference."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        value = [*value.__dict__.values(), *(value.__pydantic_extra__ or {}).values()]
    elif isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, (list, tuple)):
        return 0
    return 1 + max((_depth(v) for v in value), default=0)


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"a": 1},
        [[[]]],
        [1, [2, [3, {"x": [4]}]], "s"],
        {"a": [{"b": {"c": []}}], "d": ({"e": 1},)},
        ChatJob(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "t"}]}]).messages,
        [{"role": "assistant", "tool_calls": [{"function": {"arguments": {"deep": [[["x"]]]}}}]}],
    ],
)
def test_the_depth_walk_matches_the_nesting(value):
    from worker.contract import bounds

    depth = _depth(value)
    for limit in range(max(depth - 2, 0), depth + 2):
        assert bounds._deeper(value, limit) is (depth > limit), (limit, depth)
