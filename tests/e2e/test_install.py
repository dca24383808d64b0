"""One install namespace: the distribution built as a wheel and installed into a fresh venv is
one package, `llm_router`, usable from a service that has its own `worker.py`, `producers.py`
and `sim.py`: the public imports, `arq llm_router.worker.WorkerSettings` and `python -m
llm_router worker` run jobs there, and the service's own modules stay its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from harness.processes import settings_env

ROOT = Path(__file__).resolve().parents[2]

# Run in the service's folder, by the installed copy's python: every module of ours is under
# llm_router, the service's three are its own, and a job enqueued through the public API.
SERVICE_SCRIPT = """
import asyncio, json, sys
import producers, sim, worker
from llm_router.producers import ChatJob, JobRejected, Producer, __all__ as public
import llm_router.sim.server, llm_router.worker.process.service

async def enqueue():
    async with Producer(queue_name=sys.argv[1]) as producer:
        return await producer.enqueue(ChatJob(model="gpt-4.1", messages=[{"role": "user", "content": sys.argv[2]}]))

ours = sorted(n for n in sys.modules if n.partition(".")[0] in ("worker", "producers", "sim"))
print(json.dumps({
    "mine": [worker.MINE, producers.MINE, sim.MINE],
    "bare_modules": ours,
    "producer_file": sys.modules["llm_router.producers.api"].__file__,
    "public": sorted(public),
    "job_id": asyncio.run(enqueue()),
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (not editable); its dependencies are this venv's,
    read through a .pth (so nothing is downloaded), none of this checkout."""
    where = tmp_path_factory.mktemp("install")
    source = where / "source"  # what the Dockerfile copies, so no earlier build of the checkout is reused
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "llm_router", "worker", "producers", "sim"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(where / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (where / "dist").glob("llm_router-*.whl")
    env_dir = where / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # appended after the venv's own
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return env_dir


@pytest.fixture
def service(tmp_path) -> Path:
    """A service's folder with generic module names of its own."""
    for name in ("worker", "producers", "sim"):
        (tmp_path / f"{name}.py").write_text(f'MINE = "service {name}"\n')
    (tmp_path / "enqueue.py").write_text(SERVICE_SCRIPT)
    return tmp_path


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done


def test_an_installed_copy_runs_jobs_beside_a_service_with_its_own_worker_producers_and_sim(
    installed, service, settings, redis
):
    python, bin_dir = installed / "bin" / "python", installed / "bin"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(service), **settings_env(settings)}

    first = json.loads(run([str(python), "enqueue.py", settings.queue_name, "one"], service, env).stdout)
    assert first["mine"] == ["service worker", "service producers", "service sim"]
    assert first["bare_modules"] == ["producers", "sim", "worker"]  # the service's three, nothing of ours
    assert Path(first["producer_file"]).is_relative_to(installed)
    assert {"ChatJob", "Producer", "JobRejected", "JobResult"} <= set(first["public"])

    arq = [
        str(python),
        "-c",
        "import sys; from arq.cli import cli; sys.exit(cli())",
    ]  # `arq`, whose script is not in this venv
    run([*arq, "--burst", "llm_router.worker.WorkerSettings"], service, env)
    second = json.loads(run([str(python), "enqueue.py", settings.queue_name, "two"], service, env).stdout)
    run([str(python), "-m", "llm_router", "worker", "--burst"], service, env)

    for job_id, said in ((first["job_id"], "one"), (second["job_id"], "two")):
        record = json.loads(run([str(bin_dir / "llm-router"), "result", "--json", job_id], service, env).stdout)
        assert record["status"] == "succeeded" and record["content"] == f"[gpt-4.1] You said: {said}", record


CONSOLE_SCRIPT = """
import json
from fastapi.testclient import TestClient
from llm_router.producers.http.app import create_app
from llm_router.worker.contract.settings import Settings

settings = Settings(
    _env_file=None, ingress_tokens={"tok": {"role": "operator"}}, console_secret="installed-console-0123456789"
)
with TestClient(create_app(settings), base_url="https://testserver") as client:
    form = client.get("/console/login")
    script = client.get("/console/static/console.js")
    print(json.dumps({"form": form.status_code, "label": 'for="token"' in form.text, "script": script.status_code}))
"""


def test_an_installed_copy_serves_the_console_from_its_own_templates_and_assets(installed, tmp_path):
    """The wheel ships the console's templates, script and stylesheet (package data): an
    installed copy renders the sign-in page and serves the script, run away from the checkout."""
    (tmp_path / "console_check.py").write_text(CONSOLE_SCRIPT)
    env = {"PATH": f"{installed / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    said = json.loads(run([str(installed / "bin" / "python"), "console_check.py"], tmp_path, env).stdout)
    assert said == {"form": 200, "label": True, "script": 200}
