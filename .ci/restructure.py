#!/usr/bin/env python3
"""Place every test file in the folder of its kind (issue 19), by the table below; re-runnable.

    tests/unit         no Redis, no processes
    tests/integration  real Redis, the simulator and workers in this process
    tests/e2e          processes: worker fleets, the ingress, `llm-router` CLI runs
    tests/deploy       deploy/: Prometheus, Alertmanager, Kubernetes, compose

A file's heaviest test decides its folder (`make test-fast` runs unit and integration: nothing
there may start a process). The script `git mv`s a file that is elsewhere than its row says and
refuses a test file with no row, so a new test file is placed on purpose: add its row here.

    python3 .ci/restructure.py          # move what is misplaced (git mv), then say what moved
    python3 .ci/restructure.py --check  # change nothing; exit 1 naming what is misplaced or unplaced
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
KINDS = ("unit", "integration", "e2e", "deploy")

PLACE = {
    # unit: no Redis, no processes
    "test_headers.py": "unit",
    "test_layout.py": "unit",
    "test_cli.py": "unit",
    "test_models.py": "unit",
    "test_keys.py": "unit",
    "test_policy.py": "unit",
    "test_spacing.py": "unit",
    "test_lua.py": "unit",
    "test_reference.py": "unit",
    "test_redis_packing.py": "unit",
    "test_setting_types.py": "unit",
    # integration: a private redis-server, the simulator, workers and the app in this process
    "test_client.py": "integration",
    "test_console.py": "integration",
    "test_contract.py": "integration",
    "test_egress.py": "integration",
    "test_events.py": "integration",
    "test_ingress_coalesce.py": "integration",
    "test_ingress_fastpath.py": "integration",
    "test_limiter.py": "integration",
    "test_slot_line.py": "integration",
    "test_metrics.py": "integration",
    "test_priority.py": "integration",
    "test_queue_order.py": "integration",
    "test_resilience.py": "integration",
    "test_sim.py": "integration",
    "test_speed.py": "integration",
    "test_scripts.py": "integration",
    "test_store.py": "integration",
    "test_trust.py": "integration",
    "test_upload_quota.py": "integration",
    "test_worker.py": "integration",
    "test_wake.py": "integration",
    # e2e: worker processes, the ingress as a process, `llm-router` CLI runs
    "test_batch_ends.py": "e2e",
    "test_batches.py": "e2e",
    "test_budget_bounds.py": "e2e",
    "test_budgets.py": "e2e",
    "test_cache.py": "e2e",
    "test_chaos.py": "e2e",
    "test_cli_e2e.py": "e2e",
    "test_startup.py": "e2e",
    "test_console_browser.py": "e2e",
    "test_failover.py": "e2e",
    "test_fair_share.py": "e2e",
    "test_fleet.py": "e2e",
    "test_fuzz.py": "e2e",
    "test_hostile_input.py": "e2e",
    "test_ingress.py": "e2e",
    "test_ingress_fuzz.py": "e2e",
    "test_ingress_hostile.py": "e2e",
    "test_ingress_stream.py": "e2e",
    "test_install.py": "e2e",
    "test_openai_params.py": "e2e",
    "test_preflight.py": "e2e",
    "test_procfile.py": "e2e",
    "test_docs.py": "e2e",
    "test_redis_urls.py": "e2e",
    "test_routes.py": "e2e",
    "test_schedules.py": "e2e",
    "test_settings.py": "e2e",
    "test_spend.py": "e2e",
    "test_webhooks.py": "e2e",
    # deploy: the shipped Prometheus, Alertmanager, Kubernetes and compose files, checked and run
    "test_alerting.py": "deploy",
    "test_deploy.py": "deploy",
    "test_k8s.py": "deploy",
    "test_observability.py": "deploy",
}


def test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if ".venv" not in p.parts)


def plan() -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(misplaced file, where it belongs) pairs, and the test files with no row."""
    moves, unplaced = [], []
    for path in test_files():
        kind = PLACE.get(path.name)
        if kind is None:
            unplaced.append(path)
        elif path.parent != TESTS / kind:
            moves.append((path, TESTS / kind / path.name))
    return moves, unplaced


def rel(path: Path) -> Path:
    return path.relative_to(ROOT)


def main(argv: list[str]) -> int:
    assert set(PLACE.values()) <= set(KINDS)
    moves, unplaced = plan()
    if unplaced:
        names = ", ".join(str(rel(p)) for p in unplaced)
        print(f"no row in .ci/restructure.py's PLACE for {names}: add one ({', '.join(KINDS)})", file=sys.stderr)
        return 1
    if "--check" in argv:
        for src, dst in moves:
            print(f"misplaced: {rel(src)} belongs in {rel(dst)} (python3 .ci/restructure.py moves it)", file=sys.stderr)
        return 1 if moves else 0
    for src, dst in moves:
        subprocess.run(["git", "mv", str(rel(src)), str(rel(dst))], cwd=ROOT, check=True)
        print(f"{rel(src)} -> {rel(dst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
