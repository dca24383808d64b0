"""`llm-router sim`: flags for the simulator; fault flags set the default for every model
(per-model faults: `POST /_sim/config {"model": "gpt-4.1", "down": true}`).

`cli` is a click group holding the one command `sim`, for the root `llm-router` command to include."""

from __future__ import annotations

import math
import os
from typing import Any

import click
from pydantic import ValidationError

from .faults import Faults
from .server import Simulator, run


def _error_rates(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[tuple[int, float]]:
    rates = []
    for value in values:
        status, _, rate = value.partition("=")
        try:
            pair = (int(status), float(rate))
        except ValueError:
            raise click.BadParameter("use STATUS=RATE, e.g. 503=0.1", ctx, param) from None
        if not (100 <= pair[0] <= 599 and 0 <= pair[1] <= 1):
            raise click.BadParameter(f"{value!r}: STATUS is 100-599, RATE from 0 to 1, e.g. 503=0.1", ctx, param)
        rates.append(pair)
    return rates


cli = click.Group()


def _fault(name: str) -> str:
    """A fault flag's help: the description of its field (sim.faults.Faults), said once there."""
    return str(Faults.model_fields[name].description)


@cli.command("sim", help="Run the local AIsa simulator.")
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to listen on (0.0.0.0: all)")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8700,
    show_default=True,
    help="the port: AISA_BASE_URL is then http://HOST:PORT/v1",
)
@click.option("--api-key", "api_keys", multiple=True, help="a key it accepts (repeatable)  [default: $AISA_API_KEY]")
@click.option("--credits", type=float, default=100.0, show_default=True, help="USD of credits per key")
@click.option("--seed", type=int, default=0, show_default=True, help="seed for random faults")
@click.option("--latency-ms", type=float, default=0, show_default=True, help=_fault("latency_ms"))
@click.option("--latency-per-token-ms", type=float, default=0, show_default=True, help=_fault("latency_per_token_ms"))
@click.option("--rpm", type=int, help=_fault("rpm") + "  [default: no limit]")
@click.option("--tpm", type=int, help=_fault("tpm") + "  [default: no limit]")
@click.option("--rate-window-s", type=float, default=60, show_default=True, help=_fault("rate_window_s"))
@click.option(
    "--error-rate",
    "error_rates",
    multiple=True,
    metavar="STATUS=RATE",
    callback=_error_rates,
    help="inject this status at this rate (repeatable), e.g. 503=0.1",
)
@click.option("--down", is_flag=True, help=_fault("down"))
@click.option("--hang-s", type=float, default=0, show_default=True, help=_fault("hang_s"))
@click.option("--cut-stream-after", type=int, help=_fault("cut_stream_after"))
@click.option("--malformed", is_flag=True, help=_fault("malformed"))
@click.option("--bill-at-bound", is_flag=True, help="bill each call up to the bound a budget reserves for")
@click.option(
    "--bill-then",
    type=click.Choice(["drop", "hang"]),
    help="bill each call, then drop the connection or hang until the client times out",
)
def sim(
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    credits: float,
    seed: int,
    latency_ms: float,
    latency_per_token_ms: float,
    rpm: int | None,
    tpm: int | None,
    rate_window_s: float,
    error_rates: list[tuple[int, float]],
    down: bool,
    hang_s: float,
    cut_stream_after: int | None,
    malformed: bool,
    bill_at_bound: bool,
    bill_then: str | None,
) -> None:
    keys = list(api_keys) or [os.environ.get("AISA_API_KEY", "")]
    if not math.isfinite(credits) or credits < 0:
        raise click.BadParameter(
            f"{credits} is not an amount of USD: give a finite number, 0 or more", param_hint="--credits"
        )
    faults = _faults(
        latency_ms=latency_ms,
        latency_per_token_ms=latency_per_token_ms,
        rpm=rpm,
        tpm=tpm,
        rate_window_s=rate_window_s,
        error_rates=dict(error_rates),
        down=down,
        hang_s=hang_s,
        cut_stream_after=cut_stream_after,
        malformed=malformed,
        bill_at_bound=bill_at_bound,
        bill_then=bill_then,
    )
    try:
        simulator = Simulator(keys, credits=credits, faults=faults, seed=seed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"AIsa simulator on http://{host}:{port}/v1")
    try:
        run(host, port, simulator)
    except OSError as exc:  # a busy port, an address not on this machine, a name that does not resolve
        raise click.UsageError(f"cannot listen on --host {host} --port {port}: {exc.strerror or exc}") from None


def _faults(**flags: Any) -> Faults:
    """The faults of the flags; a value out of range is a usage error naming its flag."""
    try:
        return Faults(**flags)
    except ValidationError as exc:
        said = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise click.UsageError(said) from None
