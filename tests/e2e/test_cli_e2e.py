"""End to end with real processes: `llm-router worker` and the CLI as subprocesses."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.processes import llm_router
from tests.helpers import API_KEY, sim_admin

CLI = [llm_router()]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(sim, redis_url):
    return {
        **os.environ,
        "AISA_API_KEY": API_KEY,
        "AISA_BASE_URL": sim.base_url,
        "REDIS_URL": redis_url,
        "QUEUE_NAME": "llm-router:e2e",
        "REQUEST_TIMEOUT_S": "5",
        "POLL_DELAY_S": "0.01",
        # no /metrics: a busy METRICS_PORT stops a worker's start, and this machine runs other suites
        "METRICS_PORT": "0",
    }


@pytest.fixture
def worker_proc(env):
    proc = subprocess.Popen([*CLI, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert API_KEY not in out  # the key never reaches the logs


def cli(env, *args, timeout=60):
    """The CLI off a terminal (stdin /dev/null, output captured), as a script runs it."""
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def on_a_terminal(env, args, typed):
    """The CLI with a terminal on stdin, where `typed` is typed: (exit status, stdout, stderr)."""
    import pty

    main_fd, terminal = pty.openpty()
    try:
        os.write(main_fd, typed.encode())
        out = subprocess.run([*CLI, *args], env=env, stdin=terminal, capture_output=True, text=True, timeout=60)
    finally:
        os.close(terminal)
        os.close(main_fd)
    return out.returncode, out.stdout, out.stderr


def test_chat_vision_compare_through_a_worker_process(env, worker_proc, sim, tmp_path):
    out = cli(env, "chat", "--model", "gpt-4.1", "--message", "Hello, world!", "--system", "You are a poet")
    assert out.returncode == 0, out.stderr
    answer, cost_line = out.stdout.strip().splitlines()
    assert answer == "[gpt-4.1] You said: Hello, world!"
    assert cost_line.startswith("-- gpt-4.1 · 25 tokens · $")
    cost = float(cost_line.split("$")[1].split(" ")[0])
    assert cost == pytest.approx(sim_admin(sim, "/_sim/stats")["charged"]["gpt-4.1"], abs=1e-6)

    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    out = cli(env, "vision", "--model", "gpt-4o", "--image", str(image), "--prompt", "Describe this image")
    assert out.returncode == 0 and "I see a image/png image of 18 bytes" in out.stdout

    before = sim_admin(sim, "/_sim/stats")["charged_total"]
    out = cli(env, "compare", "--models", "gpt-4.1,claude-3-sonnet,gemini-2.0-flash", "--message", "What is 2+2?")
    assert out.returncode == 0
    for model in ("gpt-4.1", "claude-3-sonnet", "gemini-2.0-flash"):
        assert f"== {model} ==\n[{model}] You said: What is 2+2?" in out.stdout
    total = float(out.stdout.strip().splitlines()[-1].removeprefix("total $"))
    assert total == pytest.approx(sim_admin(sim, "/_sim/stats")["charged_total"] - before, abs=1e-6)


def test_no_wait_then_result_and_json(env, worker_proc):
    out = cli(env, "chat", "--model", "qwen-max", "--message", "later", "--no-wait")
    job_id = out.stdout.strip()
    assert out.returncode == 0 and len(job_id) == 32
    out = cli(env, "result", job_id, "--wait", "30", "--json")  # the old form: --wait SECONDS
    assert out.returncode == 0, out.stderr
    assert "--wait 30 is read as --wait --timeout 30" in out.stderr
    again = cli(env, "result", job_id, "--wait", "--timeout", "30")
    assert again.returncode == 0 and again.stdout.startswith("[qwen-max] You said: later") and again.stderr == ""
    assert '"content": "[qwen-max] You said: later"' in out.stdout and '"cost_source": "gateway"' in out.stdout


def test_stream_flag_and_failed_job_exit_code(env, worker_proc):
    out = cli(env, "chat", "--model", "deepseek-v3", "--message", "stream it", "--stream", "--json")
    assert out.returncode == 0 and '"ttft_s"' in out.stdout
    out = cli(env, "chat", "--model", "no-such-model", "--message", "x")
    assert out.returncode == 1 and "not_found" in out.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["chat", "--model", "gpt-4.1", "--message", "x", "--temperature", "3"], "--temperature"),
        (["chat", "--model", "gpt-4.1"], "--messages/--message"),
        (["compare", "--models", ",", "--message", "x"], "--models"),
        (["vision", "--model", "gpt-4o", "--image", "/nonexistent.png", "--prompt", "p"], "--image"),
        (["vision", "--model", "gpt-4o", "--image", "data:image/png;base64,!!", "--prompt", "p"], "--image"),
    ],
)
def test_bad_input_is_refused_before_enqueue(env, args, flag, redis_url):
    from redis import Redis

    out = cli(env, *args)
    assert out.returncode == 2
    assert out.stderr.startswith(f"llm-router: invalid {flag}") and "Nothing was enqueued" in out.stderr
    assert "Traceback" not in out.stderr
    assert Redis.from_url(redis_url).zcard("llm-router:e2e") == 0


def test_worker_without_api_key_says_so_clearly(env):
    env = {k: v for k, v in env.items() if k != "AISA_API_KEY"}
    out = subprocess.run([*CLI, "worker"], env=env, capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 2
    assert "AISA_API_KEY is not set" in out.stderr and "Traceback" not in out.stderr


def test_models_command_lists_the_gateway_models(env):
    out = cli(env, "models")
    assert out.returncode == 0 and "claude-3-sonnet" in out.stdout.splitlines()


def test_arq_cli_runs_worker_settings_from_the_environment(env, redis_url):
    job = cli(env, "chat", "--model", "grok-2", "--message", "via arq", "--no-wait").stdout.strip()
    arq = os.path.join(os.path.dirname(sys.executable), "arq")
    out = subprocess.run([arq, "worker.WorkerSettings", "--burst"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = cli(env, "result", job)
    assert result.returncode == 0 and result.stdout.startswith("[grok-2] You said: via arq")


def test_demo_console_keeps_the_servers_up_with_the_console_until_ctrl_c():
    demo = subprocess.Popen(
        [sys.executable, "-u", "-m", "harness.demo", "--console"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        said: list[str] = []
        assert demo.stdout is not None
        for line in demo.stdout:
            said.append(line)
            if "press Ctrl-C" in line:
                break
        text = "".join(said)
        url = re.search(r"the operator console: (http://127\.0\.0\.1:\d+/console/)", text)
        token = re.search(r"the operator token (\S+)", text)
        assert url and token, text
        with httpx.Client(base_url=url[1].removesuffix("/console/"), timeout=30, follow_redirects=True) as browser:
            form = browser.get("/console/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf
            signed = browser.post("/console/login", data={"token": token[1], "csrf": csrf[1]})
            assert signed.status_code == 200 and "Overview" in signed.text
            # the demo's dead letter and batch are on it
            assert "no-such-model" in browser.get("/console/dlq").text
            assert "batch_" in browser.get("/console/batches").text
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_demo_runs_end_to_end():
    out = subprocess.run([sys.executable, "-m", "harness.demo"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for title in (
        "chat",
        "streamed chat",
        "tool call",
        "vision (local file)",
        "compare",
        "fallback",
        "429",
        "unknown model",
    ):
        assert f"### {title}" in out.stdout
    assert out.stdout.count("succeeded]") == 7 and "error: not_found" in out.stdout
    assert "qwen-max server -> qwen-max server" in out.stdout and "-> deepseek-v3 ok" in out.stdout
    # Retry-After 0.5 s honoured: the wait is about that or longer (on a loaded machine). The
    # pause is booked on Redis's clock from when the 429 was recorded, the wait measured on the
    # worker's from when the attempt ended, a few ms before: 0.49 printed is the 0.5 s honoured
    honoured = re.search(r"gemini-1\.5-flash rate_limit -> gemini-1\.5-flash ok \(after (\d+\.\d+)s\)", out.stdout)
    assert honoured and float(honoured.group(1)) >= 0.45, out.stdout
    assert 'llm_router_spend_usd_total{kind="chat"' in out.stdout and "Dead letters: 1" in out.stdout
    assert "### batch: 6 prompts from a CSV" in out.stdout and "completed: 6/6 done, 0 failed" in out.stderr
    assert "p0: [gpt-4o-mini] You said: Summarise: The quarterly report" in out.stdout
    assert "6 lines in summaries.jsonl, in input order: open demo-output/summaries.jsonl" in out.stdout
    assert '      "name": "get_weather",' in out.stdout  # the tool call, as JSON
    # the worker's and the api's logs go to files, not between the report's lines
    assert "dead-lettered: Model" not in out.stdout + out.stderr and "Uvicorn running" not in out.stdout + out.stderr
    assert "dead-lettered: Model 'no-such-model'" in (ROOT / "demo-output" / "worker.log").read_text()
    assert '202 {"id":"demo-http@hello-1","status":"queued"}' in out.stdout
    assert "succeeded: [gpt-4.1] You said: Hello from curl  (source demo-http, $0.0" in out.stdout
    assert "demo done" in out.stdout


def test_dlq_list_show_replay_purge(env, sim):
    env = {**env, "BACKOFF_BASE_S": "0.01", "CIRCUIT_FAILURES": "100"}
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    ids = [
        cli(env, "chat", "--model", "gpt-4.1", "--message", m, "--fallbacks", "", "--no-wait").stdout.strip()
        for m in ("first", "second")
    ]
    burst = subprocess.run([*CLI, "worker", "--burst"], env=env, capture_output=True, text=True, timeout=60)
    assert burst.returncode == 0
    # what became of this run's jobs, as the worker exits
    assert "jobs of this worker: 0 succeeded, 2 failed (2 dead-lettered), 0 requeued" in burst.stderr
    out = cli(env, "dlq", "list")
    assert (
        out.returncode == 0 and all(i in out.stdout for i in ids) and "server: Simulated upstream failure" in out.stdout
    )
    show = cli(env, "dlq", "show", ids[0])
    assert show.returncode == 0 and '"content": "first"' in show.stdout and show.stdout.count('"model": "gpt-4.1"') >= 3
    assert cli(env, "dlq", "show", "nope").returncode == 4  # no such id

    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": False})
    assert cli(env, "dlq", "replay", ids[0]).stdout.strip() == f"replayed {ids[0]}"
    assert cli(env, "dlq", "replay", ids[0]).returncode == 4  # no longer dead
    burst = subprocess.run([*CLI, "worker", "--burst"], env=env, capture_output=True, text=True, timeout=60)
    assert burst.returncode == 0 and "jobs of this worker: 1 succeeded, 0 failed (0 dead-lettered)" in burst.stderr
    assert cli(env, "result", ids[0]).stdout.startswith("[gpt-4.1] You said: first")
    assert ids[0] not in cli(env, "dlq", "list").stdout
    refused = cli(env, "dlq", "purge")  # off a terminal: only with --yes
    assert refused.returncode == 2 and refused.stdout == ""
    assert "dlq purge deletes 1 dead letters: pass --yes" in refused.stderr and ids[1] in cli(env, "dlq", "list").stdout
    code, out, err = on_a_terminal(env, ["dlq", "purge"], "n\n")  # on one: asked, and no means no
    assert code == 2 and "Delete 1 dead letters? [y/N]" in err and "nothing was deleted" in err and out == ""
    code, out, err = on_a_terminal(env, ["dlq", "purge"], "y\n")
    assert code == 0 and out.strip() == "purged 1 dead letters", err
    assert cli(env, "dlq", "list").stdout.strip() == "the dead-letter list is empty"


def test_unreachable_redis_is_one_clear_line(env):
    from harness.redis_server import free_port

    port = free_port()
    out = cli({**env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}, "dlq", "list")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    said = f"REDIS_URL: nothing listens at 127.0.0.1:{port} (connection refused): start Redis, or point REDIS_URL at it"
    assert out.stderr.strip() == f"llm-router: {said}"


def test_waiting_with_no_worker_says_so(env):
    out = cli(env, "chat", "--model", "gpt-4.1", "--message", "anyone?", "--timeout", "4")
    assert out.returncode == 3
    assert "no worker is consuming queue 'llm-router:e2e'" in out.stderr and "llm-router worker" in out.stderr


def test_a_closed_pipe_is_not_a_traceback(env, worker_proc):
    job_id = cli(env, "chat", "--model", "gpt-4.1", "--message", "piped", "--no-wait").stdout.strip()
    assert cli(env, "result", job_id, "--wait", "30").returncode == 0
    # `true` exits without reading: every write of the CLI meets a closed pipe
    out = subprocess.run(
        f"{CLI[0]} result {job_id} --json | true", shell=True, env=env, capture_output=True, text=True, timeout=30
    )
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


def test_help_imports_no_verbs_module():
    """`llm-router --help` lists the verbs from llm_router.cli's table: none of their modules (and
    nothing they need: FastAPI, redis, httpx) is imported for it."""
    code = (
        "import sys\nfrom llm_router.cli import cli\ntry:\n    cli(['--help'], prog_name='llm-router')\n"
        "except SystemExit:\n    pass\n"
        "heavy = {'fastapi', 'redis', 'httpx', 'producers', 'worker'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "chat" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"


def test_the_exporter_serves_its_own_metrics_only(env):
    """The queue gauges and its process's, not the worker's counters (they would read 0 there)."""
    from harness.processes import answers, wait_started
    from harness.redis_server import free_port

    port = free_port()
    proc = subprocess.Popen([*CLI, "exporter", "--host", "127.0.0.1", "--port", str(port)], env=env)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_started(proc, lambda: answers(url), 60, "llm-router exporter")
        text = httpx.get(url, timeout=10).text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert {"llm_router_exporter_redis_up", "llm_router_queue_depth", "process_cpu_seconds_total"} <= names, names
    for worker_only in (
        "llm_router_spend_usd_total",
        "llm_router_jobs_total",
        "llm_router_upstream_request_duration_seconds",
    ):
        assert worker_only not in names


def test_a_burst_worker_beside_a_running_one_needs_no_metrics_port(env, tmp_path):
    """METRICS_PORT unset: a burst worker serves no /metrics, so the default port being taken
    (by the worker already running on this host) does not stop it; --port serves one."""
    import socket

    from harness.processes import answers, wait_started
    from harness.redis_server import free_port

    env = {k: v for k, v in env.items() if k != "METRICS_PORT"}
    default = socket.socket()
    try:
        default.bind(("0.0.0.0", 9464))
        default.listen()
    except OSError:  # already taken: busy either way
        pass
    try:
        job = cli(env, "chat", "--model", "gpt-4.1", "--message", "burst", "--no-wait").stdout.strip()
        out = subprocess.run(
            [*CLI, "worker", "--burst"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
        assert cli(env, "result", job).returncode == 0
    finally:
        default.close()

    port = free_port()
    proc = subprocess.Popen([*CLI, "worker", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=tmp_path)
    try:
        wait_started(proc, lambda: answers(f"http://127.0.0.1:{port}/healthz"), 60, "llm-router worker --port")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_quarantine_purge_asks_or_needs_yes(env, redis_url):
    import json

    from redis import Redis

    from worker.contract.keys import QUARANTINE

    record = {"id": "bad id", "reason": "bad_id", "queue": "llm-router:e2e", "record": None}
    Redis.from_url(redis_url).lpush(QUARANTINE, json.dumps(record), json.dumps(record))
    refused = cli(env, "quarantine", "purge")
    assert refused.returncode == 2 and "quarantine purge deletes 2 quarantined entries: pass --yes" in refused.stderr
    code, out, err = on_a_terminal(env, ["quarantine", "purge"], "y\n")
    assert code == 0 and out.strip() == "purged 2 quarantined entries" and "Delete 2 quarantined entries?" in err
    Redis.from_url(redis_url).lpush(QUARANTINE, json.dumps(record))
    assert cli(env, "quarantine", "purge", "--yes").stdout.strip() == "purged 1 quarantined entries"
    assert cli(env, "quarantine", "purge").stdout.strip() == "purged 0 quarantined entries"  # nothing to ask about


def interrupted(proc):
    """SIGINT (Ctrl-C) to `proc`: its exit status and stderr."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


@pytest.mark.parametrize(
    "args",
    [
        ["chat", "--model", "gpt-4.1", "--message", "slow"],
        ["vision", "--model", "gpt-4o", "--image", "https://example.com/a.png", "--prompt", "slow"],
        ["compare", "--models", "gpt-4.1,gpt-4o", "--message", "slow"],
    ],
)
def test_ctrl_c_while_waiting_names_the_job_that_still_runs(env, redis_url, args):
    """No worker: the verb waits; Ctrl-C says which job is enqueued and how to get its result."""
    from redis import Redis

    from harness.wait import wait_until

    redis = Redis.from_url(redis_url)
    proc = subprocess.Popen([*CLI, *args], env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    queued = wait_until(lambda: redis.zrange("llm-router:e2e", 0, -1), 30, "the job to be enqueued")
    code, err = interrupted(proc)
    job_id = queued[0].decode()
    assert code == 130 and "Traceback" not in err and "Aborted!" not in err, err
    assert f"job {job_id} was enqueued and still runs" in err and f"llm-router result {job_id} --wait" in err


def test_ctrl_c_while_following_a_batch_says_it_keeps_running(env, tmp_path):
    import json

    line = {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4.1", "messages": []}}
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        "".join(
            json.dumps(
                {
                    **line,
                    "custom_id": f"r{i}",
                    "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]},
                }
            )
            + "\n"
            for i in range(2)
        )
    )
    proc = subprocess.Popen(
        [*CLI, "batch", "submit", str(requests), "--wait"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    batch_id = proc.stdout.readline().strip()  # printed once submitted, before following it
    code, err = interrupted(proc)
    assert batch_id.startswith("batch_") and code == 130 and "Traceback" not in err, err
    assert f"batch {batch_id} keeps running" in err
    for command in ("status", "results", "cancel"):
        assert f"llm-router batch {command} {batch_id}" in err
    assert cli(env, "batch", "status", batch_id).stdout.split()[1] == "in_progress"


def test_the_worker_says_at_exit_what_became_of_its_jobs(env):
    """arq's shutdown line counts a dead-lettered job as complete ("0 failed"): ours follows it."""
    proc = subprocess.Popen([*CLI, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert cli(env, "chat", "--model", "gpt-4.1", "--message", "fine").returncode == 0
        assert cli(env, "chat", "--model", "no-such-model", "--message", "x", "--fallbacks", "").returncode == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    arq = out.index("shutdown on SIGTERM")
    assert "0 failed" in out[arq:].splitlines()[0]
    assert out.index("jobs of this worker: 1 succeeded, 1 failed (1 dead-lettered), 0 requeued") > arq, out


def test_a_batch_refused_as_a_whole_does_not_suggest_skip_invalid(env, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = cli(env, "batch", "submit", str(empty))
    assert out.returncode == 2 and "the input has no lines" in out.stderr
    assert "--skip-invalid" not in out.stderr and "bad of" not in out.stderr, out.stderr


def test_no_such_id_is_exit_4_on_every_verb_given_one(env, tmp_path):
    """One exit status for an id that names nothing; 3 stays "no result yet" for a job that exists."""
    batch = "batch_" + "0" * 32
    for args in (
        ["result", "no-such-job"],
        ["result", "no-such-job", "--timeout", "0"],
        ["dlq", "show", "no-such-job"],
        ["dlq", "replay", "no-such-job"],
        ["batch", "status", batch],
        ["batch", "results", batch],
        ["batch", "cancel", batch],
    ):
        out = cli(env, *args)
        assert out.returncode == 4 and "Traceback" not in out.stderr, (args, out.stderr)
    schedules = tmp_path / "schedules.toml"
    schedules.write_text('[[schedule]]\nname = "nightly"\ncron = "0 3 * * *"\ninput = "in.jsonl"\n')
    out = cli({**env, "SCHEDULES_FILE": str(schedules)}, "schedule", "run", "nope")
    assert out.returncode == 4 and "no schedule 'nope'" in out.stderr
    job = cli(env, "chat", "--model", "gpt-4.1", "--message", "x", "--no-wait").stdout.strip()
    queued = cli(env, "result", job)  # no worker: queued, no result yet
    assert queued.returncode == 3 and f"job {job} is queued: no result yet" in queued.stderr
