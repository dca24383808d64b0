"""A plain OpenAI-compatible server with none of AIsa's extensions: no usage.cost, no
credits_remaining, no /v1/models, and stream chunks without a role chunk or usage."""

from __future__ import annotations

import json

from aiohttp import web


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    text = f"plain answer to {body['messages'][-1]['content']}"
    if not body.get("stream"):
        return web.json_response(
            {
                "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for word in text.split(" "):
        await response.write(f"data: {json.dumps({'choices': [{'delta': {'content': word + ' '}}]})}\n\n".encode())
    await response.write(b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
    await response.write_eof()
    return response


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    return app
