"""Schemathesis against a live platform over HTTP: `make fuzz FUZZ_LIVE=1` (the module's main), and
the helpers the fuzz tests share (tests/integration/test_fuzz_api.py, test_fuzz_live.py).

    python -m tests.fuzz_live [--url http://127.0.0.1:8000] [--examples 500] [--seed N]

Uses the platform answering at the URL (WEB_PORT, 8000 by default), or starts one with `make run`'s
launcher (``python -m project.launcher``, with no enqueue rate limit so that valid requests reach
the services) and stops it at the end. Makes the user ``fuzz`` (an e-mail, the permission to ask for
reports) and a token with ``manage.py``, then runs ``st run`` on the served /api/openapi.json with
every check, both generation modes and every phase, with a fresh random seed, printed first so
that a failure can be replayed (``--seed``). Exits with schemathesis' status: 0 when it found
nothing. The run creates jobs, orders and reports as ``fuzz`` on that platform.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

BASE_DIR = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent
SCHEMA_PATH = "/api/openapi.json"
FUZZ_USERNAME = "fuzz"
FUZZ_EMAIL = "fuzz@example.com"
#: how long a platform started here may take to answer /readyz (a first run migrates and collects)
START_TIMEOUT = 300


def api_schema() -> dict:
    """The API's OpenAPI document as the app serves it at /api/openapi.json, built in this process
    (as JSON reads it back: status codes are strings there)."""
    from django.core.serializers.json import DjangoJSONEncoder

    from tasks.api import api

    return json.loads(json.dumps(api.get_openapi_schema(path_prefix="/api/"), cls=DjangoJSONEncoder))


def make_fuzz_user():
    """The customer ``fuzz`` (made if missing; not staff), with an e-mail and the permission to ask
    for reports, so that a valid request of every operation can succeed: without them reports answer
    403 and orders 409 ``email_required``, and the fuzz would never get past those."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from tasks.platform.permissions import REPORT_PERMISSION

    user, _ = get_user_model().objects.get_or_create(username=FUZZ_USERNAME, defaults={"email": FUZZ_EMAIL})
    app_label, codename = REPORT_PERMISSION.split(".")
    user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


# --- make fuzz FUZZ_LIVE=1 -------------------------------------------------------------------------


def answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def platform(url: str) -> Iterator[None]:
    """The platform at ``url``: the one running there, or one started with the launcher for the run."""
    if answers(url):
        print(f"fuzzing the platform running at {url}", flush=True)
        yield
        return
    print(f"no platform answers at {url}: starting one (python -m project.launcher)", flush=True)
    # Its own process group, so that Ctrl-C here is not also the launcher's, and its stop is ours.
    env = {**os.environ, "API_RATE_LIMIT_PER_MINUTE": "0"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "project.launcher"], cwd=BASE_DIR, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(url):
            if launcher.poll() is not None:
                raise SystemExit(f"the launcher exited ({launcher.returncode}) before {url} answered")
            if time.monotonic() > deadline:
                raise SystemExit(f"{url}/readyz did not answer within {START_TIMEOUT}s")
            time.sleep(1)
        yield
    finally:
        launcher.send_signal(signal.SIGINT)  # Ctrl-C, as `make run` is stopped: honcho stops every process
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


def fuzz_token() -> str:
    """A fresh token of the user ``fuzz`` (made if missing), through manage.py as a developer would."""
    manage = [sys.executable, "manage.py"]
    subprocess.run(
        [*manage, "shell", "-c", "from tests.fuzz_live import make_fuzz_user; make_fuzz_user()"],
        cwd=BASE_DIR,
        check=True,
    )
    made = subprocess.run(
        [*manage, "create_api_token", FUZZ_USERNAME], cwd=BASE_DIR, check=True, capture_output=True, text=True
    )
    return made.stdout.strip().splitlines()[-1]


def run_schemathesis(url: str, token: str, *, examples: int, seed: int) -> int:
    """``st run`` over the served schema with every check, mode and phase; its exit status."""
    auth = f"Authorization: Bearer {token}"
    schema = requests.get(f"{url}{SCHEMA_PATH}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    schema.raise_for_status()
    with tempfile.NamedTemporaryFile("wb", suffix=".json", prefix="openapi-") as file:
        file.write(schema.content)  # fetched here: the schema is served to authenticated callers only
        file.flush()
        argv = [
            str(BIN_DIR / "st"), "run", file.name, "--url", url, "--header", auth,
            "--checks", "all", "--mode", "all", "--max-examples", str(examples), "--seed", str(seed),
        ]  # fmt: skip
        shown = shlex.join(argv).replace(token, "$TOKEN")
        print(f"schemathesis seed {seed}: {shown}", flush=True)
        return subprocess.run(argv, cwd=BASE_DIR).returncode


def main(argv: list[str] | None = None) -> int:
    import project  # noqa: F401 - every entry point reads the checkout's local settings (WEB_PORT) first

    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('WEB_PORT', '8000')}")
    parser.add_argument("--examples", type=int, default=500, help="examples per operation (fuzzing phase)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run: the seed it printed")
    options = parser.parse_args(argv)
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**32)
    url = options.url.rstrip("/")
    with platform(url):
        status = run_schemathesis(url, fuzz_token(), examples=options.examples, seed=seed)
    replay = f"make fuzz FUZZ_LIVE=1 FUZZ_SEED={seed} FUZZ_EXAMPLES={options.examples}"
    print(f"schemathesis {'found nothing' if status == 0 else 'found failures'} (seed {seed}); replay: {replay}")
    return status


if __name__ == "__main__":
    sys.exit(main())
