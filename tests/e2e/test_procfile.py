"""The Procfile with `.env.example` runs the local stack under honcho, as a new user would."""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from harness.processes import answers
from harness.redis_server import free_port
from harness.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_honcho_runs_the_procfile_with_the_example_env(redis_url, tmp_path):
    sim_port = free_port()
    local = {
        "SIM_PORT": str(sim_port),
        "AISA_BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
        "REDIS_URL": redis_url,
        "METRICS_PORT": str(free_port()),
        "EXPORTER_PORT": str(free_port()),
        "API_PORT": str(free_port()),
    }
    example = (ROOT / ".env.example").read_text()
    assert set(local) <= set(re.findall(r"^([A-Z_]+)=", example, re.M))  # only this machine's ports change
    env_file = re.sub(
        r"^([A-Z_]+)=.*$", lambda m: f"{m[1]}={local.get(m[1], m[0].split('=', 1)[1])}", example, flags=re.M
    )
    (tmp_path / ".env").write_text(env_file)
    shutil.copy(ROOT / "Procfile", tmp_path / "Procfile")
    env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    stack = subprocess.Popen(
        [str(BIN / "honcho"), "start"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{sim_port}/_sim/stats"), 30, "the simulator under honcho")
        dotenv = {
            k: v.strip("'")  # honcho reads a quoted value as written
            for k, v in (line.split("=", 1) for line in env_file.splitlines() if re.match(r"^[A-Z_]+=", line))
        }
        out = subprocess.run(
            [str(BIN / "llm-router"), "chat", "--model", "gpt-4.1", "--message", "via honcho", "--timeout", "60"],
            env={**env, **dotenv},
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("[gpt-4.1] You said: via honcho")
        api = f"http://127.0.0.1:{local['API_PORT']}"
        wait_until(lambda: answers(f"{api}/readyz"), 30, "the ingress under honcho")
        job = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "via the ingress"}]}
        answer = httpx.post(
            f"{api}/v1/chat/completions", json=job, headers={"Authorization": "Bearer local-token"}, timeout=60
        )
        assert answer.json()["choices"][0]["message"]["content"] == "[gpt-4.1] You said: via the ingress"
    finally:
        os.killpg(stack.pid, signal.SIGTERM)
        log, _ = stack.communicate(timeout=30)
    assert "sim-key" not in log  # the key never reaches the logs
