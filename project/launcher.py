"""`make run`: prepare a local platform, then start every process of the Procfile under honcho.

The checkout's local settings (var/local.env, project.localconfig) are written on the first run,
with generated secrets, and read by every process; the environment wins over them. Uses REDIS_URL
when it answers, else starts the bundled Redis on that loopback address. Mail goes to a local
catcher (the Procfile's `mail`), read at /mail/. The database is migrated, the admin made sure of
and the demo catalogue seeded before the processes start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from project import localconfig
from project.redis_clients import DEFAULT_SENTINEL_MASTER
from project.redis_server import DEFAULT_REDIS_URL, answers, is_local

BASE_DIR = Path(__file__).resolve().parent.parent
PLATFORM_PROCESSES = ["web", "worker-critical", "worker-default", "worker-bulk", "beat", "relay", "flower"]


def _manage(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env)
    if done.returncode:
        sys.exit(done.returncode)


def _shown_path(file: Path | None) -> str:
    if file is None:
        return "the environment only (LOCAL_ENV_FILE is empty)"
    return str(file.relative_to(BASE_DIR)) if file.is_relative_to(BASE_DIR) else str(file)


def main() -> None:
    settings_file = localconfig.ensure()
    localconfig.load()  # importing `project` read it already, unless this call just wrote it
    env = dict(os.environ)
    # Procfile commands (celery, uvicorn, python) come from this interpreter's virtualenv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    redis_url = env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    processes = list(PLATFORM_PROCESSES)
    if not answers(redis_url, master=env.get("REDIS_SENTINEL_MASTER") or DEFAULT_SENTINEL_MASTER):
        if not is_local(redis_url):
            sys.exit(f"configuration error: REDIS_URL {redis_url} does not answer")
        processes.append("redis")
    mail_dir = env.get("MAIL_CATCHER_DIR", "")
    if mail_dir:
        (BASE_DIR / mail_dir).parent.mkdir(parents=True, exist_ok=True)
        processes.append("mail")

    _manage(env, "migrate", "--noinput", "-v", "0")
    _manage(env, "collectstatic", "--noinput", "-v", "0")
    _manage(env, "ensure_admin")
    _manage(env, "seed_demo_catalogue")

    web_port, flower_port = env.get("WEB_PORT", "8000"), env.get("FLOWER_PORT", "5555")
    web = f"http://127.0.0.1:{web_port}"
    redis_note = "bundled Redis, started now" if "redis" in processes else "running"

    def shown(name: str) -> str:  # what the local file holds is printed, what the environment set is not
        if name not in env:
            return f"(none: {name} is not set)"
        return env[name] if localconfig.LOADED.get(name) == env[name] else f"(from {name})"

    mail_port = env.get("MAIL_CATCHER_PORT", "1025")
    mail_note = (
        f"  mail    {web}/mail/  (caught by the local SMTP catcher on 127.0.0.1:{mail_port})\n" if mail_dir else ""
    )
    print(
        f"\n  web     {web}/  (admin: /admin/, API docs: /api/docs)\n"
        f"  shop    {web}/orders/new  (demo products; pay with the sandbox card tok_ok)\n"
        f"{mail_note}"
        f"  admin   {env.get('DJANGO_SUPERUSER_USERNAME') or 'admin'} / {shown('DJANGO_SUPERUSER_PASSWORD')}\n"
        f"  flower  http://127.0.0.1:{flower_port}/  (basic auth {shown('FLOWER_BASIC_AUTH')})\n"
        f"  redis   {redis_url} ({redis_note})\n"
        f"  config  {_shown_path(settings_file)} (the environment wins over it)\n"
        f"  Ctrl-C stops everything.\n",
        flush=True,
    )
    honcho = shutil.which("honcho", path=env["PATH"])
    os.chdir(BASE_DIR)
    os.execve(honcho, [honcho, "-f", "Procfile", "start", *processes], env)


if __name__ == "__main__":
    main()
