"""Every Redis key llm-router reads or writes: its own (`llm-router:*`) and arq's, in one place.

The layout is part of the contract (producers in other languages write jobs, operators read
results): the key table of docs/redis-keys.md is checked against this module by a test.

    llm-router:result:<job_id>          JSON JobResult, expires after RESULT_TTL_S
    llm-router:done:<job_id>            pub/sub channel: one message when the result is stored
    llm-router:calls:<job_id>           hash call id -> JSON Attempt, every upstream call of the job
    llm-router:spend:total              hash model -> USD, all time
    llm-router:spend:day:<YYYY-MM-DD>   hash model -> USD that UTC day (kept SPEND_RETENTION_DAYS)
    llm-router:spend:<by>:<YYYY-MM-DD>  hash name -> USD that UTC day, by source | batch | route (kept as long)
    llm-router:usage:<by>:<YYYY-MM-DD>  hash calls|<name>, prompt|<name>, completion|<name> -> count that
                                        UTC day, by model | source | batch | route (kept as long)
    llm-router:spend:saved:<YYYY-MM-DD> hash model -> USD the response cache saved that UTC day (kept as long)
    llm-router:spend:source-model:<YYYY-MM-DD>  hash <source>|<model> -> USD that UTC day (kept as long)
    llm-router:usage:source-model:<YYYY-MM-DD>  hash calls|, prompt|, completion|<source>|<model> -> count
    llm-router:spend:saved-source-model:<YYYY-MM-DD>  hash <source>|<model> -> USD the cache saved
    llm-router:cache:<sha256>           hash: a cached answer (worker.calls.cache): answer JSON, the original cost
    llm-router:cache:lock:<sha256>      the worker calling the gateway for a request others wait on
    llm-router:cache:done:<sha256>      pub/sub channel: the lock's holder is done (kept or released)
    llm-router:credits                  hash remaining (USD), updated_at (UNIX time)
    llm-router:dlq / llm-router:dlq:index   hash job id -> JSON DeadLetter / sorted by time
    llm-router:gate                     JSON: the queue is paused (401/402); see worker.limits.gate
    llm-router:gate:probe               which worker probes a paused queue this interval
    llm-router:model:<model>            hash: shared limiter and circuit state; see worker.limits.limiter
    llm-router:model:_global            hash: the optional global limit
    llm-router:source-limit:<source>    hash: a source's quota (SOURCE_LIMITS) in the shared limiter
    llm-router:workers:<queue>          sorted set worker id -> last heartbeat (UNIX time)
    llm-router:digest:<job_id>          what the job a caller's own id names is (a conflict check)
    llm-router:quarantine               list: queue entries with no readable id (worker.process.quarantine)
    llm-router:bulk:<queue>             sorted set: bulk jobs waiting for a free slot (worker.process.lease)
    llm-router:wake:<queue>             list, one token at most: wakes an idle worker (worker.process.wake)
    llm-router:fair:<queue>:...         fair share between sources (worker.limits.fair): per-source sub-queues,
                                        the claim's virtual times, running jobs, the sources seen
    llm-router:batch:<batch_id>         hash: a batch's record (worker.batches.record): status, counters, cost
    llm-router:batch:lines:<batch_id>   list: [line, custom_id] of each enqueued line, in input order
    llm-router:batch:done:<batch_id>    hash line -> outcome: each line counted once
    llm-router:batch:staged:<batch_id>  sorted set: lines written, not yet released to the queue
    llm-router:batches                  sorted set batch id -> created_at (the list)
    llm-router:schedule:<name>          hash (worker.batches.schedules): since, last tick, last batch, last success
    llm-router:schedule:claim:<batch_id>    the worker submitting a tick's batch (a lease it renews)
    llm-router:schedule:output:<batch_id>   the worker writing a scheduled batch's output, then `done`
    llm-router:schedules:pending        sorted set: scheduled batches not yet seen final (output, success)
    llm-router:source-batches:<source>  sorted set batch id -> created_at: the batches an ingress token made
    llm-router:source-files:<source>    sorted set file id -> created_at (ms): the files an ingress token uploaded
    llm-router:budget:day:<YYYY-MM-DD>  hash <scope>:<name>:spent / :reserved, a day (BUDGET_TZ) of the daily budgets
    llm-router:budget:reservations      hash reservation id -> JSON {w: worst case USD, s: [[key, field prefix]...]}
    llm-router:budget:deadlines         sorted set reservation id -> deadline (ms): an expired one is released
    llm-router:budget:learned           hash <model>|in, <model>|out -> USD per token, an upper bound learned from bills
    llm-router:settled:<id>             a settlement applied (worker.limits.limiter): one sent again adds nothing
    llm-router:file:<file_id>           hash: an uploaded file's record (producers.files): name, size, owner
    llm-router:file:data:<file_id>      string: its bytes, written and read in chunks
    llm-router:webhooks                 sorted set delivery -> when due: webhooks to send (worker.outputs.outbox)
    llm-router:webhook:<delivery>       hash: one delivery (`job:<id>`, `batch:<id>`): url, status, tries, last error
    llm-router:events:<job_id>          stream: a streaming job's events (worker.outputs.events): deltas, resets, result
    llm-router:events-posted:<job_id>   pub/sub channel: new entries in that stream (wakes the ingress's readers)
    llm-router:recent-jobs              stream: each job that ended (its id, status, model, cost, source), newest
                                        last, MAXLEN ~ RECENT_JOBS_MAX, expires RESULT_TTL_S after the last
    llm-router:recent-jobs:<source>     the same, of one source's jobs (the console's Jobs page)

arq's own keys (arq.constants) for a job id: `arq:job:<id>` (the job record),
`arq:in-progress:<id>` (claimed; our lease), `arq:retry:<id>` (runs so far), `arq:result:<id>`
(arq's result, never kept here: keep_result=0).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from arq import constants as _arq

PREFIX = "llm-router:"
RESULT_PREFIX = PREFIX + "result:"
DONE_PREFIX = PREFIX + "done:"
CALLS_PREFIX = PREFIX + "calls:"
SPEND_TOTAL = PREFIX + "spend:total"
SPEND_DAY_PREFIX = PREFIX + "spend:day:"
SPEND_DAY_TTL_S = 400 * 24 * 3600
SPEND_SOURCE_PREFIX = PREFIX + "spend:source:"
SPEND_BATCH_PREFIX = PREFIX + "spend:batch:"
SPEND_ROUTE_PREFIX = PREFIX + "spend:route:"
SPEND_SAVED_PREFIX = PREFIX + "spend:saved:"
USAGE_MODEL_PREFIX = PREFIX + "usage:model:"
USAGE_SOURCE_PREFIX = PREFIX + "usage:source:"
USAGE_BATCH_PREFIX = PREFIX + "usage:batch:"
USAGE_ROUTE_PREFIX = PREFIX + "usage:route:"
# A source's spend by model (the console's Spend page for one source), as the dimensions' records.
SPEND_SOURCE_MODEL_PREFIX = PREFIX + "spend:source-model:"
USAGE_SOURCE_MODEL_PREFIX = PREFIX + "usage:source-model:"
SAVED_SOURCE_MODEL_PREFIX = PREFIX + "spend:saved-source-model:"
# The dimensions of the per-day spend records (worker.contract.store, worker.observe.spend), and their keys.
SPEND_BY = ("model", "source", "batch", "route")
# What the per-call script records: those, and each source's by model (names `<source>|<model>`).
SPEND_RECORDS = (*SPEND_BY, "source-model")
_SPEND_PREFIXES = {
    "model": SPEND_DAY_PREFIX,
    "source": SPEND_SOURCE_PREFIX,
    "batch": SPEND_BATCH_PREFIX,
    "route": SPEND_ROUTE_PREFIX,
    "source-model": SPEND_SOURCE_MODEL_PREFIX,
}
_USAGE_PREFIXES = {
    "model": USAGE_MODEL_PREFIX,
    "source": USAGE_SOURCE_PREFIX,
    "batch": USAGE_BATCH_PREFIX,
    "route": USAGE_ROUTE_PREFIX,
    "source-model": USAGE_SOURCE_MODEL_PREFIX,
}
CACHE_PREFIX = PREFIX + "cache:"
CACHE_LOCK_PREFIX = PREFIX + "cache:lock:"
CACHE_DONE_PREFIX = PREFIX + "cache:done:"
CREDITS = PREFIX + "credits"
DLQ = PREFIX + "dlq"
DLQ_INDEX = PREFIX + "dlq:index"
GATE = PREFIX + "gate"
PROBE_LOCK = PREFIX + "gate:probe"
MODEL_PREFIX = PREFIX + "model:"
GLOBAL_LIMIT = MODEL_PREFIX + "_global"
SOURCE_LIMIT_PREFIX = PREFIX + "source-limit:"
WORKERS_PREFIX = PREFIX + "workers:"
DIGEST_PREFIX = PREFIX + "digest:"
CONFIG_PREFIX = PREFIX + "config:"
WORKER_CONFIG_PREFIX = CONFIG_PREFIX + "worker:"
BULK_PREFIX = PREFIX + "bulk:"
WAKE_PREFIX = PREFIX + "wake:"
FAIR_PREFIX = PREFIX + "fair:"
QUARANTINE = PREFIX + "quarantine"
BATCH_PREFIX = PREFIX + "batch:"
BATCH_LINES_PREFIX = PREFIX + "batch:lines:"
BATCH_DONE_PREFIX = PREFIX + "batch:done:"
BATCH_STAGED_PREFIX = PREFIX + "batch:staged:"
BATCH_SWEPT_PREFIX = PREFIX + "batch:swept:"
BATCHES = PREFIX + "batches"
SCHEDULE_PREFIX = PREFIX + "schedule:"
SCHEDULE_CLAIM_PREFIX = PREFIX + "schedule:claim:"
SCHEDULE_OUTPUT_PREFIX = PREFIX + "schedule:output:"
SCHEDULES_PENDING = PREFIX + "schedules:pending"
SOURCE_BATCHES_PREFIX = PREFIX + "source-batches:"
SOURCE_FILES_PREFIX = PREFIX + "source-files:"
SOURCE_UPLOADS_PREFIX = PREFIX + "source-uploads:"
BUDGET_DAY_PREFIX = PREFIX + "budget:day:"
SETTLED_PREFIX = PREFIX + "settled:"
BUDGET_RESERVATIONS = PREFIX + "budget:reservations"
BUDGET_DEADLINES = PREFIX + "budget:deadlines"
BUDGET_LEARNED = PREFIX + "budget:learned"
FILE_PREFIX = PREFIX + "file:"
FILE_DATA_PREFIX = PREFIX + "file:data:"
WEBHOOKS = PREFIX + "webhooks"
WEBHOOK_PREFIX = PREFIX + "webhook:"
EVENTS_PREFIX = PREFIX + "events:"
EVENTS_POSTED_PREFIX = PREFIX + "events-posted:"
RECENT_JOBS = PREFIX + "recent-jobs"
RECENT_JOBS_PREFIX = RECENT_JOBS + ":"
# The jobs each recent-jobs stream keeps (about: trimmed with MAXLEN ~, so up to a hundred more).
RECENT_JOBS_MAX = 1000

# arq's key knowledge, used nowhere else.
JOB_PREFIX = _arq.job_key_prefix
IN_PROGRESS_PREFIX = _arq.in_progress_key_prefix
RETRY_PREFIX = _arq.retry_key_prefix
# How long a job's run count (its retry key) is kept, as arq does (also in the claim scripts: RETRY_KEY_TTL_S).
RETRY_KEY_TTL_S = 88400
ARQ_RESULT_PREFIX = _arq.result_key_prefix
# arq keeps a job record this long past its due time (a record outliving its queue entry is harmless).
JOB_EXPIRES_EXTRA_MS = _arq.expires_extra_ms


def result_key(job_id: str) -> str:
    return RESULT_PREFIX + job_id


def done_channel(job_id: str) -> str:
    return DONE_PREFIX + job_id


def calls_key(job_id: str) -> str:
    return CALLS_PREFIX + job_id


def spend_day_key(day: str | None = None) -> str:
    return SPEND_DAY_PREFIX + (day or today())


def spend_by_key(by: str, day: str | None = None) -> str:
    """The day's USD by `by` (SPEND_RECORDS); by model it is `spend:day:<day>`."""
    return _SPEND_PREFIXES[by] + (day or today())


def usage_key(by: str, day: str | None = None) -> str:
    """The day's calls and tokens by `by` (SPEND_RECORDS): fields `calls|<name>`, `prompt|<name>`,
    `completion|<name>`."""
    return _USAGE_PREFIXES[by] + (day or today())


def spend_saved_key(day: str | None = None) -> str:
    """USD by model the response cache saved that day (written by the cache; read by the spend report)."""
    return SPEND_SAVED_PREFIX + (day or today())


def saved_source_model_key(day: str | None = None) -> str:
    """USD the response cache saved that day by `<source>|<model>` (written by the cache)."""
    return SAVED_SOURCE_MODEL_PREFIX + (day or today())


def today() -> str:
    """The current UTC day, as the spend records name it (written once a day: strftime is about
    2 µs, asked for a few times a job)."""
    global _day
    number = int(time.time() // 86400)  # UTC days are 86,400 s of Unix time each
    if _day[0] != number:
        _day = (number, datetime.fromtimestamp(number * 86400, UTC).strftime("%Y-%m-%d"))
    return _day[1]


_day: tuple[int, str] = (-1, "")


def cache_key(digest: str) -> str:
    return CACHE_PREFIX + digest


def cache_lock_key(digest: str) -> str:
    return CACHE_LOCK_PREFIX + digest


def cache_done_channel(digest: str) -> str:
    return CACHE_DONE_PREFIX + digest


def model_key(model: str) -> str:
    return MODEL_PREFIX + model


def source_limit_key(source: str) -> str:
    return SOURCE_LIMIT_PREFIX + source


def bulk_key(queue_name: str) -> str:
    return BULK_PREFIX + queue_name


def wake_key(queue_name: str) -> str:
    return WAKE_PREFIX + queue_name


def fair_key(queue_name: str, *parts: str) -> str:
    """A key of the fair share (worker.limits.fair): `llm-router:fair:<queue>:<part>:...`."""
    return ":".join([FAIR_PREFIX + queue_name, *parts])


def digest_key(job_id: str) -> str:
    return DIGEST_PREFIX + job_id


def workers_key(queue_name: str) -> str:
    return WORKERS_PREFIX + queue_name


def config_key(digest: str) -> str:
    return CONFIG_PREFIX + digest


def worker_config_key(worker_id: str) -> str:
    return WORKER_CONFIG_PREFIX + worker_id


def batch_key(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id


def batch_lines_key(batch_id: str) -> str:
    return BATCH_LINES_PREFIX + batch_id


def batch_done_key(batch_id: str) -> str:
    return BATCH_DONE_PREFIX + batch_id


def batch_staged_key(batch_id: str) -> str:
    return BATCH_STAGED_PREFIX + batch_id


def batch_swept_key(batch_id: str) -> str:
    return BATCH_SWEPT_PREFIX + batch_id


def schedule_key(name: str) -> str:
    return SCHEDULE_PREFIX + name


def schedule_claim_key(batch_id: str) -> str:
    return SCHEDULE_CLAIM_PREFIX + batch_id


def schedule_output_key(batch_id: str) -> str:
    return SCHEDULE_OUTPUT_PREFIX + batch_id


def source_batches_key(source: str) -> str:
    return SOURCE_BATCHES_PREFIX + source


def source_files_key(source: str) -> str:
    return SOURCE_FILES_PREFIX + source


def source_uploads_key(source: str) -> str:
    """The uploads of a source in progress: upload id -> `<bytes reserved>:<lease end, ms>` (producers.files)."""
    return SOURCE_UPLOADS_PREFIX + source


def budget_day_key(day: str) -> str:
    return BUDGET_DAY_PREFIX + day


def file_key(file_id: str) -> str:
    return FILE_PREFIX + file_id


def file_data_key(file_id: str) -> str:
    return FILE_DATA_PREFIX + file_id


def webhook_key(delivery: str) -> str:
    return WEBHOOK_PREFIX + delivery


def events_key(job_id: str) -> str:
    return EVENTS_PREFIX + job_id


def events_posted_channel(job_id: str) -> str:
    return EVENTS_POSTED_PREFIX + job_id


def recent_jobs_key(source: str | None = None) -> str:
    """The jobs that ended lately: every source's (None), or one source's."""
    return RECENT_JOBS if source is None else RECENT_JOBS_PREFIX + source


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def in_progress_key(job_id: str) -> str:
    return IN_PROGRESS_PREFIX + job_id


def retry_key(job_id: str) -> str:
    return RETRY_PREFIX + job_id


def arq_result_key(job_id: str) -> str:
    return ARQ_RESULT_PREFIX + job_id


def settled_key(settlement: str) -> str:
    """The mark of a limiter settlement applied (worker.limits.limiter): one sent again adds nothing."""
    return SETTLED_PREFIX + settlement
