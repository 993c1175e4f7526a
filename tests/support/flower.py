"""Flower started through the platform's entry point (as the Procfile does), and reading it."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.support.processes import BIN_DIR, ManagedProcess, free_port, wait_until

FLOWER_AUTH = ("ops", "flower-test-pass")


def launch_flower(process_env: dict[str, str], state_dir: Path, env: dict | None = None) -> tuple[ManagedProcess, str]:
    """Start Flower through the platform's entry point (as the Procfile does) on a free port."""
    port = free_port()
    environment = {
        **process_env,
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
        "FLOWER_DB": str(state_dir / "flower.db"),
        **(env or {}),
    }
    argv = [str(BIN_DIR / "python"), "-m", "project.flower", f"--port={port}"]
    process = ManagedProcess(argv, environment, f"flower:{port}").start()
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not process.alive():
            raise AssertionError(f"Flower exited:\n{process.log()}")
        try:
            return requests.get(f"{base}/healthcheck", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(healthy, timeout=30, what=f"Flower on port {port}")
    return process, base


def flower_task(base: str, task_id) -> dict | None:
    response = requests.get(f"{base}/api/task/info/{task_id}", auth=FLOWER_AUTH, timeout=5)
    return response.json() if response.status_code == 200 else None


def wait_for_flower_state(base: str, task_id, state: str) -> dict:
    return wait_until(
        lambda: (task := flower_task(base, task_id)) and task.get("state") == state and task,
        timeout=30,
        what=f"Flower to see task {task_id} in {state}",
    )
