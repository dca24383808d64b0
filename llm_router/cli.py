"""`llm-router`: the one command (the console script `llm_router.cli:main`). It only gathers
the verbs each part owns (arq's cli.py is the model): producer verbs live next to the producer
API, operator verbs next to the worker, and `sim` next to the simulator.

    producers/cli.py   chat, vision, compare, result, models
    producers/batch_cli.py   batch submit | status | results | cancel | list
    producers/http.py  api (the HTTP ingress)
    worker/cli.py      worker, exporter, dlq, quarantine
    worker/schedule_cli.py   schedule list | run
    worker/spend_cli.py      spend
    sim/cli.py         sim
"""

from __future__ import annotations

import click

from producers.batch_cli import cli as batch_verbs
from producers.cli import cli as producer_verbs
from producers.http import cli as ingress_verbs
from sim.cli import cli as sim_verbs
from worker.cli import cli as operator_verbs
from worker.schedule_cli import cli as schedule_verbs
from worker.spend_cli import cli as spend_verbs

cli = click.CommandCollection(
    name="llm-router",
    sources=[producer_verbs, batch_verbs, ingress_verbs, operator_verbs, schedule_verbs, spend_verbs, sim_verbs],
    help="Queue-driven LLM calls through the AIsa gateway. A verb enqueues, waits and prints the answer and "
    "its cost; --no-wait prints the job id, --json the whole result record.",
)


def main() -> None:
    cli(prog_name="llm-router")


if __name__ == "__main__":
    main()
