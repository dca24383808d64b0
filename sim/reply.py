"""One reply of the stand-in: what the model says to a request (`Answer`), its usage and
cost, and the stream chunks it is sent as."""

from __future__ import annotations

import uuid
from typing import Any

# the bound of `bill_at_bound` is the worker's own byte-walker (one implementation, not two)
from worker.limits.tokens import input_bound

from . import answers
from .catalog import IMAGE_TOKENS_MAX, ModelSpec, image_tokens
from .requests import ApiError


class Answer:
    """What the model says to one request: text (maybe cut at max_tokens or max_completion_tokens;
    a JSON object under `response_format`) or a function call, `n` times (each choice the same,
    each billed), with token log probabilities when asked (`logprobs`, `top_logprobs`). A choice
    never has more tokens than the cap: the answer is cut there (`finish_reason` length)."""

    def __init__(self, spec: ModelSpec, body: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        self.spec = spec
        self.call = answers.tool_call_for(body, messages)
        self.legacy = self.call is not None and not body.get("tools")
        self.n = body.get("n") or 1
        self.logprobs = body.get("logprobs") is True
        self.top_logprobs = body.get("top_logprobs") or 0
        self.prompt_tokens = answers.prompt_tokens(body, messages, image_tokens(spec))
        caps = [t for t in (body.get("max_tokens"), body.get("max_completion_tokens")) if t is not None]
        self.max_tokens = max_tokens = min(caps) if caps else None
        if self.prompt_tokens + (max_tokens or 0) > spec.context:
            raise ApiError(
                400,
                f"This model's maximum context length is {spec.context} tokens; "
                f"the request needs {self.prompt_tokens + (max_tokens or 0)}",
                "context_length_exceeded",
                "messages",
            )
        text = answers.reply_text(spec.id, messages)
        fmt = body.get("response_format") or {}
        if fmt.get("type") in ("json_object", "json_schema"):
            text = answers.json_reply(text, (fmt.get("json_schema") or {}).get("schema"))
        self.finish_reason = "stop"
        if self.call:
            self.words: list[str] = []
            self.choice_tokens = answers.count_tokens(self.call["name"] + self.call["arguments"])
            self.finish_reason = "function_call" if self.legacy else "tool_calls"
            if max_tokens is not None and self.choice_tokens > max_tokens:
                kept = answers.prefix_within(self.call["name"] + self.call["arguments"], max_tokens)
                self.call["arguments"] = kept[len(self.call["name"]) :]
                self.choice_tokens, self.finish_reason = max_tokens, "length"
        else:
            if max_tokens is not None and answers.count_tokens(text) > max_tokens:
                text, self.finish_reason = answers.words_within(text, max_tokens), "length"
            self.words = text.split(" ")
            self.choice_tokens = answers.count_tokens(text)
        # OpenAI bills the tokens of every choice
        self.completion_tokens = self.choice_tokens * self.n

    def bill_at_bound(self, body: dict[str, Any]) -> None:
        """Bill the most a budget's worst case allows (Faults.bill_at_bound): every byte of the
        body a prompt token (worker.limits.tokens.input_bound, the budgets' own bound), each image the
        catalogue's most, each choice its cap (none: the context window)."""
        self.prompt_tokens = input_bound(body, IMAGE_TOKENS_MAX)
        self.completion_tokens = (self.max_tokens or self.spec.context) * self.n

    def pieces(self) -> list[str]:
        """The content as the stream sends it, one piece (token) a chunk."""
        return [word if i == 0 else " " + word for i, word in enumerate(self.words)]

    def message(self) -> dict[str, Any]:
        if not self.call:
            return {"role": "assistant", "content": " ".join(self.words)}
        if self.legacy:
            return {"role": "assistant", "content": None, "function_call": self.call}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": self.call}],
        }

    def choices(self) -> list[dict[str, Any]]:
        logprobs = self.logprobs_of(self.pieces(), 0) if self.logprobs else None
        return [
            {"index": i, "message": self.message(), "logprobs": logprobs, "finish_reason": self.finish_reason}
            for i in range(self.n)
        ]

    def logprobs_of(self, pieces: list[str], first: int) -> dict[str, Any]:
        """OpenAI's `logprobs` for these pieces (the first at position `first`): deterministic
        log probabilities, the piece itself the most likely of `top_logprobs` alternatives."""
        if not pieces:
            return {"content": None, "refusal": None}
        content = []
        for position, token in enumerate(pieces, first):
            logprob = -round(0.01 * (1 + position % 7), 4)
            top = [
                {"token": token, "logprob": logprob, "bytes": list(token.encode())},
                *(
                    {"token": f"{token}~{k}", "logprob": logprob - k, "bytes": list(f"{token}~{k}".encode())}
                    for k in range(1, self.top_logprobs)
                ),
            ][: self.top_logprobs]
            content.append({"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top})
        return {"content": content, "refusal": None}


def usage_of(answer: Answer, cost: float, credits: float) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "cost": cost,
        "credits_remaining": credits,
    }


def stream_chunks(answer: Answer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream as chunk dicts: role, content pieces (or tool-call pieces), finish, usage; each
    chunk carries one choice (its `index`), the `n` choices interleaved piece by piece."""
    deltas: list[dict[str, Any]]
    if answer.call and answer.legacy:
        deltas = [
            {"function_call": {"name": answer.call["name"], "arguments": ""}},
            {"function_call": {"arguments": answer.call["arguments"]}},
        ]
    elif answer.call:
        args = answer.call["arguments"]
        half = len(args) // 2
        deltas = [
            {
                "tool_calls": [
                    {"index": 0, "type": "function", "function": {"name": answer.call["name"], "arguments": ""}}
                ]
            },
            {"tool_calls": [{"index": 0, "function": {"arguments": args[:half]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": args[half:]}}]},
        ]
    else:
        deltas = [{"content": piece} for piece in answer.pieces()]
    ids = ["call_" + uuid.uuid4().hex[:24] for _ in range(answer.n)]

    def chunk(
        index: int, delta: dict[str, Any], position: int | None = None, finish: str | None = None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "delta": delta}
        if answer.logprobs:
            content = delta.get("content")
            choice["logprobs"] = answer.logprobs_of([content], position) if content and position is not None else None
        return {"choices": [choice | {"finish_reason": finish}], "usage": None}

    chunks = [chunk(i, {"role": "assistant", "content": ""}) for i in range(answer.n)]
    for position, delta in enumerate(deltas):
        for i in range(answer.n):
            if position == 0 and "tool_calls" in delta:  # each choice its own call id
                delta = {"tool_calls": [{**delta["tool_calls"][0], "id": ids[i]}]}
            chunks.append(chunk(i, delta, position))
    chunks += [chunk(i, {}, finish=answer.finish_reason) for i in range(answer.n)]
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({"usage": "final"})
    return chunks
