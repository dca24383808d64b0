"""Helpers shared by the tests."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.redis_server import free_port  # noqa: F401 - re-exported for the tests
from harness.sim_admin import sim_admin  # noqa: F401 - re-exported for the tests
from worker.contract.settings import Settings
from worker.process.runner import RouterWorker
from worker.process.service import create_worker

API_KEY = "test-key-0123456789"


def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for `host` (an IP address or a DNS name), valid a day, and its
    key: (cert.pem, key.pem) in `directory`. The certificate is its own CA."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed (apt-get install openssl)")
    try:
        san = f"IP:{ipaddress.ip_address(host)}"
    except ValueError:
        san = f"DNS:{host}"
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={host}"),
            *("-addext", f"subjectAltName={san}"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def run_worker(settings: Settings, **overrides: object) -> RouterWorker:
    """An arq Worker built in-process, in burst mode: runs until the queue is empty."""
    worker = create_worker(settings, burst=True, handle_signals=False, **overrides)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker
