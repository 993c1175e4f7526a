"""Static checks of docker-compose.yml (and the Dockerfile) against the Procfile, the queues and the
environment variables the project reads. No Docker engine is needed: the files are parsed, not run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tasks.platform.queues import QueueName

BASE_DIR = Path(__file__).resolve().parents[2]
#: Procfile processes with no compose twin: compose runs the official Redis image instead, and
#: production mail goes to a real SMTP server, not the local catcher
LOCAL_ONLY_PROCESSES = {"redis", "mail"}
BACKING_SERVICES = ("redis", "postgres")
#: environment variables read by third-party code rather than by the project
THIRD_PARTY_ENV = {"UVICORN_HOST"}
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a server in a container must listen on

_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_ENV_READ = re.compile(r"""os\.(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")
_REQUIRED = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*:\?[^}]*\}$")


def _procfile() -> dict[str, str]:
    processes = {}
    for line in (BASE_DIR / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PROCFILE_LINE.match(line.strip())
        assert match, f"Procfile line is not 'name: command': {line!r}"
        processes[match[1]] = match[2].strip()
    return processes


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    return _procfile()


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict), "no services in compose"
    return compose["services"]


@pytest.fixture(scope="module")
def app_services(procfile) -> list[str]:
    """Every service that runs the project's image: the Procfile's processes plus migrate."""
    return sorted(set(procfile) - LOCAL_ONLY_PROCESSES | {"migrate"})


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(name): "" if value is None else str(value) for name, value in env.items()}


def _depends_on(service: dict) -> dict[str, str]:
    """Dependency name -> condition (compose's default for the short list form is service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _queues(command: str) -> set[str]:
    """The queues a `celery worker` command consumes (-Q / --queues), empty for anything else."""
    args = shlex.split(command)
    if "worker" not in args:
        return set()
    found = set()
    for i, arg in enumerate(args):
        if arg in ("-Q", "--queues"):
            value = args[i + 1] if i + 1 < len(args) else ""
        elif arg.startswith("--queues="):
            value = arg.partition("=")[2]
        elif arg.startswith("-Q") and len(arg) > 2:
            value = arg[2:]
        else:
            continue
        found |= {queue.strip() for queue in value.split(",") if queue.strip()}
    return found


def _command_text(command) -> str:
    return command if isinstance(command, str) else " ".join(map(str, command or []))


def test_compose_runs_the_procfile_commands_verbatim(procfile, services):
    for name, command in procfile.items():
        if name in LOCAL_ONLY_PROCESSES:
            continue
        assert name in services, f"Procfile process {name!r} has no compose service"
        assert isinstance(services[name].get("command"), str), f"{name}: compose command must be a string"
        assert services[name]["command"] == command, (
            f"{name}: compose command differs from the Procfile\n"
            f"  compose:  {services[name]['command']}\n  Procfile: {command}"
        )


@pytest.mark.parametrize("source", ["docker-compose.yml", "Procfile"])
def test_every_queue_has_exactly_one_worker(source, procfile, services):
    if source == "Procfile":
        commands = procfile
    else:
        commands = {name: _command_text(service.get("command")) for name, service in services.items()}
    consumers = {name: _queues(command) for name, command in commands.items()}
    known = set(QueueName.values)
    for queue in known:
        by = sorted(name for name, queues in consumers.items() if queue in queues)
        assert len(by) == 1, f"{source}: queue {queue!r} must be consumed by exactly one process, got {by}"
    unknown = {name: queues - known for name, queues in consumers.items() if queues - known}
    assert not unknown, f"{source}: workers consume queues that are not declared in QueueName: {unknown}"


def test_app_services_share_one_image(services, app_services):
    missing = [name for name in app_services if name not in services]
    assert not missing, f"app services missing from compose: {missing}"
    builds = {name: (services[name].get("build"), services[name].get("image")) for name in app_services}
    assert all(build is not None for build, _ in builds.values()), f"every app service must build the image: {builds}"
    assert len(set(builds.values())) == 1, f"app services must share one build and image: {builds}"


def test_app_services_set_only_variables_the_project_reads(services, app_services):
    import django.conf

    django.conf.settings.DATABASES  # noqa: B018 - loading settings records what they read
    import celeryconfig  # noqa: F401 - importing it records what it reads
    from project.env import READ

    allowed = set(READ) | THIRD_PARTY_ENV
    allowed |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (BASE_DIR / "Procfile").read_text()))
    sources = [BASE_DIR / "flowerconfig.py", *(BASE_DIR / "project").glob("*.py"), *(BASE_DIR / "tasks").rglob("*.py")]
    for path in sources:
        allowed |= set(_ENV_READ.findall(path.read_text()))

    unknown = {
        (name, variable)
        for name in app_services
        for variable in _environment(services.get(name, {}))
        if variable not in allowed
    }
    assert not unknown, f"compose sets variables nothing reads (typo or stale?): {sorted(unknown)}"


def test_web_and_flower_listen_on_all_interfaces(services):
    # The Procfile leaves both on loopback, which is unreachable from outside a container.
    assert _environment(services["web"]).get("UVICORN_HOST") == ALL_INTERFACES
    assert _environment(services["flower"]).get("FLOWER_ADDRESS") == ALL_INTERFACES


def test_secrets_are_required_from_the_environment(services):
    for name, service in services.items():
        for variable, value in _environment(service).items():
            if re.search(r"SECRET|PASSWORD|AUTH", variable):
                assert _REQUIRED.match(value), f"{name}: {variable} must be '${{NAME:?...}}', got {value!r}"
            elif variable.endswith("_URL") and "@" in value:
                password = value.partition("://")[2].rpartition("@")[0].partition(":")[2]
                assert _REQUIRED.match(password), f"{name}: {variable} must take its password from a required variable"


def test_backing_services_are_durable_and_healthchecked(services, app_services):
    redis_args = shlex.split(_command_text(services["redis"].get("command")))
    redis_command = " ".join(redis_args)
    for flag in ("--appendonly yes", "--maxmemory-policy noeviction"):
        assert flag in redis_command, f"redis must run with {flag}: {redis_command}"
    assert "--requirepass" in redis_args, f"redis must require a password: {redis_command}"

    for name in BACKING_SERVICES:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} needs a healthcheck"
        assert any(
            volume.split(":")[0] and not volume.startswith((".", "/")) for volume in services[name]["volumes"]
        ), f"{name} must keep its data in a named volume"

    for name in app_services:
        deps = _depends_on(services[name])
        for backing in BACKING_SERVICES:
            assert deps.get(backing) == "service_healthy", f"{name} must wait for {backing} to be healthy: {deps}"
        if name != "migrate":
            assert deps.get("migrate") == "service_completed_successfully", f"{name} must wait for migrate: {deps}"


#: Redis's memory units (redis.conf): k/m/g are powers of 1000, kb/mb/gb of 1024
_REDIS_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
_REDIS_MEMORY = re.compile(r"^(\d+)([a-z]*)$")
_WITH_DEFAULT = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*:-([^}]+)\}$")


def _redis_bytes(value: str) -> int:
    """A Redis memory value (``1gb``, ``500mb``, ``1000000``) in bytes; ``${VAR:-1gb}`` counts as its default."""
    default = _WITH_DEFAULT.match(value)
    match = _REDIS_MEMORY.match((default[1] if default else value).strip().lower())
    assert match and match[2] in _REDIS_UNITS, f"not a Redis memory value: {value!r}"
    return int(match[1]) * _REDIS_UNITS[match[2]]


def test_redis_has_a_memory_ceiling_and_refuses_writes_when_full(services):
    # Without maxmemory Redis grows until the host kills it; with an evicting policy a full Redis
    # would delete keys, the broker's queue lists among them. noeviction refuses writes instead.
    args = shlex.split(_command_text(services["redis"].get("command")))
    assert args.count("--maxmemory") == 1, f"redis must run with --maxmemory: {args}"
    assert _redis_bytes(args[args.index("--maxmemory") + 1]) >= 64 * 2**20, "maxmemory is 0 (no limit) or tiny"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def test_depends_on_targets_exist(services):
    dangling = {
        (name, target)
        for name, service in services.items()
        for target in _depends_on(service)
        if target not in services
    }
    assert not dangling, f"depends_on names services that do not exist: {sorted(dangling)}"


def test_image_runs_as_non_root_without_baked_secrets():
    text = (BASE_DIR / "Dockerfile").read_text().replace("\\\n", " ")  # join continued lines
    lines = [line.strip() for line in text.splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, f"the image must end as a non-root user, got {users}"
    for line in lines:
        if line.startswith(("ENV ", "ARG ")):
            assert not re.search(r"SECRET|PASSWORD|AUTH", line), f"secret baked into the image: {line}"
    ignored = (BASE_DIR / ".dockerignore").read_text().split()
    for path in (".env", "var/"):
        assert path in ignored, f".dockerignore must keep {path} (local secrets) out of the image"


@pytest.mark.parametrize("name", BACKING_SERVICES)
def test_backing_services_are_not_published_on_the_host(services, name):
    # Reached by the app services over compose's network only; a published Redis is a remote shell.
    service = services[name]
    assert not service.get("ports"), f"{name} must not publish a host port: {service.get('ports')}"
    assert service.get("network_mode") != "host", f"{name} must not share the host's network"


def test_every_credential_comes_from_a_required_variable(services):
    # Wider than SECRET/PASSWORD/AUTH above: API keys and tokens too (PAYMENT_GATEWAY_API_KEY).
    for name, service in services.items():
        for variable, value in _environment(service).items():
            if re.search(r"SECRET|PASSWORD|AUTH|API_KEY|TOKEN", variable):
                assert _REQUIRED.match(value), f"{name}: {variable} must be '${{NAME:?...}}', got {value!r}"


def test_no_service_runs_with_debug_on(services):
    for name, service in services.items():
        value = _environment(service).get("DJANGO_DEBUG", "false").strip().lower()
        assert value in ("", "0", "false", "no", "off"), f"{name}: DJANGO_DEBUG={value!r} in production"


def test_the_bulk_workers_container_yields_the_cpu_to_the_others(services, app_services):
    # A container's processes share the CPU with other containers by cgroup weight: the bulk
    # worker's nice value (BULK_WORKER_NICE) counts only inside its own container.
    assert services["worker-bulk"]["cpu_shares"] < 1024
    assert all("cpu_shares" not in services[name] for name in app_services if name != "worker-bulk")
