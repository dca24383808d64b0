"""`llm-router`: the seed's verbs (chat, vision, compare, models) through the queue, plus
`result`, `dlq`, `worker`, `exporter` and `sim`. By default a command enqueues, waits and prints the answer
and its cost; `--no-wait` prints the job id; `--json` prints the whole record."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from worker.models import JobResult
from worker.settings import ConfigError, exit_on_config_error, load_settings

from .api import JobRejected, Producer, ResultTimeout

# Job fields as the CLI spells them, so errors name the flag the user typed.
_FLAGS = {"max_tokens": "--max-tokens", "top_p": "--top-p", "frequency_penalty": "--frequency-penalty",
          "presence_penalty": "--presence-penalty", "models": "--models", "messages": "--messages/--message",
          "model": "--model", "temperature": "--temperature", "image": "--image", "prompt": "--prompt",
          "stop": "--stop", "tools": "--tools", "functions": "--functions", "source": "--source",
          "fallbacks": "--fallbacks", "max_wait_s": "--max-wait"}


def _json_arg(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None


def _params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", help="system prompt")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--frequency-penalty", type=float)
    p.add_argument("--presence-penalty", type=float)
    p.add_argument("--stop", action="append", help="a stop sequence (repeatable)")
    p.add_argument("--stream", action="store_true", help="stream from the gateway (records time-to-first-token)")
    p.add_argument("--source", help="who is asking: a short label for spend by producer")
    _job_flags(p)


def _routing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fallbacks", help="models to try next, comma-separated (overrides FALLBACKS; '' for none)")
    p.add_argument("--max-wait", type=float, help="longest wait in seconds for a rate-limited model")


def _job_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job-id", help="your own id: enqueuing the same id twice runs the job once")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the result (default 120)")
    p.add_argument("--json", action="store_true", help="print the whole result record as JSON")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="llm-router", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="one chat completion")
    p.add_argument("--model", required=True)
    _routing(p)
    p.add_argument("--message", help="the user message")
    p.add_argument("--messages", type=_json_arg, help="the whole conversation as a JSON array")
    p.add_argument("--tools", type=_json_arg, help="tools as a JSON array")
    p.add_argument("--functions", type=_json_arg, help="legacy functions as a JSON array")
    _params(p)

    p = sub.add_parser("vision", help="ask about an image (URL or local file)")
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True, help="http(s) URL, data URL or local file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--detail", choices=["auto", "low", "high"])
    _routing(p)
    _params(p)

    p = sub.add_parser("compare", help="the same question to several models at once")
    p.add_argument("--models", required=True, help="comma-separated, e.g. gpt-4.1,claude-3-sonnet")
    p.add_argument("--message")
    p.add_argument("--messages", type=_json_arg)
    _params(p)

    sub.add_parser("models", help="the models the gateway lists")

    p = sub.add_parser("result", help="print a job's result")
    p.add_argument("job_id")
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for it (default: don't)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("dlq", help="dead-lettered jobs: list, show, replay, purge")
    dlq = p.add_subparsers(dest="dlq_command", required=True)
    q = dlq.add_parser("list", help="newest first")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true")
    dlq.add_parser("show", help="one dead letter with every attempt").add_argument("job_id")
    q = dlq.add_parser("replay", help="put jobs back in the queue under the same id")
    target = q.add_mutually_exclusive_group(required=True)
    target.add_argument("job_id", nargs="?")
    target.add_argument("--all", action="store_true")
    dlq.add_parser("purge", help="forget every dead letter")

    p = sub.add_parser("worker", help="run a worker (settings from the environment)")
    p.add_argument("--burst", action="store_true", help="stop when the queue is empty")

    sub.add_parser("exporter", help="serve the queue-level metrics (credits, queue, dead letters) on EXPORTER_PORT")

    sub.add_parser("sim", help="run the local AIsa simulator", add_help=False)  # parsed by sim.cli (click)
    return root


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:  # until the root command is click: `sim.cli:cli` takes its own flags
        from sim.cli import cli

        return cli.main(argv, prog_name="llm-router")
    args = parser().parse_args(argv)
    try:
        if args.command == "worker":
            return _worker(args)
        if args.command == "exporter":
            return _exporter()
        code = asyncio.run(_COMMANDS[args.command](args))
    except ConfigError as exc:
        exit_on_config_error(exc)
    except RedisConnectionError as exc:
        print(f"llm-router: cannot reach Redis ({exc}): start it, or point REDIS_URL at it", file=sys.stderr)
        code = 1
    except JobRejected as exc:
        print(f"llm-router: invalid {_FLAGS.get(exc.field.split('.')[0], exc.field)} ({exc.field}): "
              f"{exc.message}. Nothing was enqueued.", file=sys.stderr)
        code = 2
    raise SystemExit(code)


def _worker(args: argparse.Namespace) -> None:
    import logging

    from worker.service import create_worker

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
    create_worker(load_settings(), burst=args.burst).run()


def _exporter() -> None:
    import logging

    from worker.exporter import serve

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    try:
        serve(load_settings())
    except KeyboardInterrupt:
        pass


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in {
        "system": args.system, "temperature": args.temperature, "max_tokens": args.max_tokens,
        "top_p": args.top_p, "frequency_penalty": args.frequency_penalty,
        "presence_penalty": args.presence_penalty, "stop": args.stop, "stream": args.stream or None,
        "source": args.source, "job_id": args.job_id,
    }.items() if v is not None}


def _routed(args: argparse.Namespace) -> dict[str, Any]:
    routed: dict[str, Any] = {}
    if args.fallbacks is not None:
        routed["fallbacks"] = [m.strip() for m in args.fallbacks.split(",") if m.strip()]
    if args.max_wait is not None:
        routed["max_wait_s"] = args.max_wait
    return routed


async def _chat(args: argparse.Namespace) -> int:
    async with Producer() as producer:
        job_id = await producer.chat(args.model, args.message, messages=args.messages, tools=args.tools,
                                     functions=args.functions, **_routed(args), **_common(args))
        return await _finish(producer, job_id, args)


async def _vision(args: argparse.Namespace) -> int:
    async with Producer() as producer:
        job_id = await producer.vision(args.model, args.image, args.prompt, detail=args.detail,
                                       **_routed(args), **_common(args))
        return await _finish(producer, job_id, args)


async def _compare(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    async with Producer() as producer:
        job_id = await producer.compare(models, args.message, messages=args.messages, **_common(args))
        return await _finish(producer, job_id, args)


async def _result(args: argparse.Namespace) -> int:
    async with Producer() as producer:
        if args.wait:
            args.timeout, args.no_wait = args.wait, False
            return await _finish(producer, args.job_id, args)
        result = await producer.result(args.job_id)
    if result is None:
        print(f"llm-router: no result for {args.job_id} (queued, running, expired or unknown)", file=sys.stderr)
        return 1
    _print(result, args.json)
    return 0 if result.status == "succeeded" else 1


async def _models(args: argparse.Namespace) -> int:
    from worker.client import AIsaClient
    from worker.errors import AIsaError

    settings = load_settings()
    async with AIsaClient(settings.aisa_base_url, settings.api_key()) as client:
        try:
            models = await client.models()
        except AIsaError as exc:
            print(f"llm-router: the gateway did not list its models: {exc}", file=sys.stderr)
            return 1
    print("\n".join(models))
    return 0


async def _dlq(args: argparse.Namespace) -> int:
    async with Producer() as producer:
        letters = producer.dead_letters
        if args.dlq_command == "list":
            found = await letters.list(args.limit)
            if args.json:
                print(json.dumps([json.loads(d.model_dump_json(exclude_none=True)) for d in found], indent=2))
            for d in [] if args.json else found:
                reason = f"{d.error.type}: {d.error.message}" if d.error else "failed"
                print(f"{d.job_id}  {d.kind:<7}  {d.dead_at:%Y-%m-%d %H:%M:%S}  {len(d.attempts)} calls  {reason}")
            if not found and not args.json:
                print("the dead-letter list is empty")
            return 0
        if args.dlq_command == "show":
            letter = await letters.get(args.job_id)
            if letter is None:
                print(f"llm-router: {args.job_id} is not in the dead-letter list", file=sys.stderr)
                return 1
            print(letter.model_dump_json(indent=2, exclude_none=True))
            return 0
        if args.dlq_command == "replay":
            return await _replay(letters, args)
        print(f"purged {await letters.purge()} dead letters")
        return 0


async def _replay(letters: Any, args: argparse.Namespace) -> int:
    if args.all:
        print(f"replayed {await letters.replay_all()} jobs")
        return 0
    try:
        replayed = await letters.replay(args.job_id)
    except ValueError as exc:
        print(f"llm-router: {exc}", file=sys.stderr)
        return 1
    if not replayed:
        print(f"llm-router: {args.job_id} is not in the dead-letter list", file=sys.stderr)
        return 1
    print(f"replayed {args.job_id}")
    return 0


async def _finish(producer: Producer, job_id: str, args: argparse.Namespace) -> int:
    if args.no_wait:
        print(job_id)
        return 0
    try:
        result = await producer.wait(job_id, args.timeout)
    except ResultTimeout as exc:
        print(f"llm-router: {exc}; fetch it later with: llm-router result {job_id}", file=sys.stderr)
        return 3
    _print(result, args.json)
    return 0 if result.status == "succeeded" else 1


def _print(result: JobResult, as_json: bool) -> None:
    if as_json:
        print(result.model_dump_json(indent=2, exclude_none=True))
        return
    if result.answers is not None:
        for answer in result.answers:
            print(f"== {answer.model} ==")
            print(answer.content if answer.status == "succeeded" else f"failed: {answer.error.message}")  # type: ignore[union-attr]
            print(_cost_line(answer.usage, answer.cost, answer.latency_s))
        print(f"total {_money(result.cost)}")
    elif result.status == "succeeded":
        print(result.content if result.content is not None else json.dumps(result.tool_calls or result.function_call))
        print(_cost_line(result.usage, result.cost, result.latency_s, result.model))
    if result.error:
        print(f"llm-router: job {result.job_id} failed: {result.error.type}: {result.error.message}", file=sys.stderr)


def _cost_line(usage: Any, cost: float | None, latency: float | None, model: str | None = None) -> str:
    parts = [model] if model else []
    if usage:
        parts.append(f"{usage.total_tokens} tokens")
    parts.append(_money(cost))
    if latency is not None:
        parts.append(f"{latency:.3f}s")
    return "-- " + " · ".join(parts)


def _money(cost: float | None) -> str:
    return "cost unknown" if cost is None else f"${cost:.6f}"


_COMMANDS = {"chat": _chat, "vision": _vision, "compare": _compare, "result": _result, "models": _models,
             "dlq": _dlq}


if __name__ == "__main__":
    main()
