"""`make run`: prepare a local platform, then start every process of the Procfile under honcho.

Uses REDIS_URL when it answers, else starts the bundled Redis on that loopback address.
Secrets that are not set are generated once and kept in var/local-secrets.json (git-ignored),
so a restart keeps the same admin and Flower passwords.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from project.redis_server import DEFAULT_REDIS_URL, answers, is_local

BASE_DIR = Path(__file__).resolve().parent.parent
SECRETS_FILE = BASE_DIR / "var" / "local-secrets.json"
PLATFORM_PROCESSES = ["web", "worker-critical", "worker-default", "worker-bulk", "beat", "relay", "flower"]

GENERATED = {
    "DJANGO_SECRET_KEY": lambda: secrets.token_urlsafe(50),
    "DJANGO_SUPERUSER_PASSWORD": lambda: secrets.token_urlsafe(12),
    "FLOWER_BASIC_AUTH": lambda: f"ops:{secrets.token_urlsafe(12)}",
}


def _fill_local_secrets(env: dict[str, str]) -> set[str]:
    """Fill unset secrets from var/local-secrets.json, generating missing ones; returns their names."""
    stored = json.loads(SECRETS_FILE.read_text()) if SECRETS_FILE.exists() else {}
    filled = {name for name in GENERATED if not env.get(name)}
    for name in filled:
        env[name] = stored.setdefault(name, GENERATED[name]())
    if filled:
        SECRETS_FILE.parent.mkdir(parents=True, exist_ok=True)
        SECRETS_FILE.write_text(json.dumps(stored, indent=2))
        SECRETS_FILE.chmod(0o600)
    return filled


def _manage(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env)
    if done.returncode:
        sys.exit(done.returncode)


def main() -> None:
    env = dict(os.environ)
    # Procfile commands (celery, uvicorn, python) come from this interpreter's virtualenv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DJANGO_SUPERUSER_USERNAME", "admin")
    # A local run takes payments from the sandbox gateway the web process serves (test tokens).
    env.setdefault("PAYMENT_SANDBOX", "true")
    generated = _fill_local_secrets(env)
    redis_url = env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    processes = list(PLATFORM_PROCESSES)
    if not answers(redis_url):
        if not is_local(redis_url):
            sys.exit(f"configuration error: REDIS_URL {redis_url} does not answer")
        processes.append("redis")

    _manage(env, "migrate", "--noinput", "-v", "0")
    _manage(env, "collectstatic", "--noinput", "-v", "0")
    _manage(env, "ensure_admin")

    web_port, flower_port = env.get("WEB_PORT", "8000"), env.get("FLOWER_PORT", "5555")
    redis_note = "bundled Redis, started now" if "redis" in processes else "running"

    def shown(name: str) -> str:  # only secrets this launcher made are printed
        return env[name] if name in generated else f"(from {name})"

    admin_password = shown("DJANGO_SUPERUSER_PASSWORD")
    print(
        f"\n  web     http://127.0.0.1:{web_port}/  (admin: /admin/, API docs: /api/docs)\n"
        f"  admin   {env['DJANGO_SUPERUSER_USERNAME']} / {admin_password}\n"
        f"  flower  http://127.0.0.1:{flower_port}/  (basic auth {shown('FLOWER_BASIC_AUTH')})\n"
        f"  redis   {redis_url} ({redis_note})\n"
        f"  Ctrl-C stops everything.\n",
        flush=True,
    )
    honcho = shutil.which("honcho", path=env["PATH"])
    os.chdir(BASE_DIR)
    os.execve(honcho, [honcho, "-f", "Procfile", "start", *processes], env)


if __name__ == "__main__":
    main()
