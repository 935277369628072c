"""docker/: the compose file and Dockerfile checked without a Docker engine.

Every stl-tune command a service runs is parsed by the real CLI, so a renamed option fails here
rather than on a GPU host.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def env_example() -> dict[str, str]:
    """docker/.env.example's settings as {name: value} (commented-out examples left out)."""
    out = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S*)", line.strip())
        if m:
            out[m[1]] = m[2]
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ (a literal $)."""

    def sub(m: re.Match) -> str:
        name, op, arg = m[1], m[2], m[3]
        if name in env and env[name] != "":
            return env[name]
        assert op != ":?", f"${{{name}}} is required and .env.example does not set it"
        return arg if op == ":-" else ""

    value = re.sub(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", sub, value)
    return value.replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def stl_services(compose: dict) -> dict[str, dict]:
    """The services that run the stl-tune image (built from docker/Dockerfile)."""
    return {k: s for k, s in compose["services"].items() if "build" in s}


def walk_strings(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from walk_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_strings(v)
    elif node is not None:
        yield str(node)


def parse_cli(argv: list[str]) -> typer.Context:
    """argv parsed by the real `stl-tune` app; unknown commands or options raise a usage error."""
    from stl_tune.cli import app

    cmd, ctx, name = typer.main.get_command(app), None, "stl-tune"
    while hasattr(cmd, "get_command"):  # a group: descend to the subcommand argv names
        ctx = typer.Context(cmd, info_name=name, parent=ctx)
        name, *argv = argv
        cmd = cmd.get_command(ctx, name)
        assert cmd is not None, f"no command `{name}` in the stl-tune CLI"
    return cmd.make_context(name, argv, parent=ctx, resilient_parsing=False)


# ------------------------------------------------------------------------------ compose.yaml
def test_compose_services_volumes_and_health(compose):
    services = compose["services"]
    assert {"db", "dashboard", "search", "worker"} <= set(services)
    db = services["db"]
    assert db["image"].startswith("postgres:")
    assert any(v.split(":")[1] == "/var/lib/postgresql/data" for v in db["volumes"])
    assert db["volumes"][0].split(":")[0] in compose["volumes"]  # a named volume, not a host path
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    for name in ("dashboard", "search"):
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"
    # The joining worker runs on another host: it must not start (or wait for) a database of its own.
    assert "depends_on" not in services["worker"] and services["worker"]["profiles"] == ["join"]
    env = env_example()
    db_url = interpolate(services["worker"]["environment"]["STL_TUNE_STORAGE"], {**env, "DB_HOST": "10.0.0.5"})
    assert db_url.startswith("postgresql+psycopg://") and "@10.0.0.5:5432/" in db_url
    assert "@db:5432/" in interpolate(services["search"]["environment"]["STL_TUNE_STORAGE"], env)


def test_compose_reserves_gpus_for_workers(compose):
    for name in ("search", "worker"):
        (device,) = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["count"] == "all" and device["capabilities"] == ["gpu"]
    assert "deploy" not in compose["services"]["dashboard"]


def test_compose_has_no_literal_password(compose):
    """Passwords come from docker/.env: every credential in the file is a ${...} interpolation."""
    assert compose["services"]["db"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    for s in walk_strings(compose):
        for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", s):
            assert password.startswith("${"), f"literal password in compose.yaml: {s}"
    assert "POSTGRES_PASSWORD" in env_example()


def test_dashboard_published_on_loopback_only(compose):
    for service in compose["services"].values():
        for port in service.get("ports", []):
            host_ip = interpolate(port, {}).split(":")[0]
            assert host_ip == "127.0.0.1", f"{port} is published beyond this host by default"
    argv = compose["services"]["dashboard"]["command"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"  # inside the container; see compose.yaml


def test_env_file_is_git_ignored():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "docker/.env"]).returncode == 0
    assert ignored, "docker/.env holds the database password: add it to .gitignore"


def test_service_commands_parse_with_the_real_cli(compose, monkeypatch):
    """Each stl-tune service's command (after .env.example interpolation) is a valid command line."""
    monkeypatch.chdir(ROOT)  # study files are given relative to the image's WORKDIR, the repo root
    env = env_example()
    services = stl_services(compose)
    assert set(services) == {"dashboard", "search", "worker"}
    for name, service in services.items():
        argv = [interpolate(a, env) for a in service["command"]]
        ctx = parse_cli(argv)
        mounts = {v.split(":")[1] for v in service.get("volumes", [])}
        for key in ("data_dir", "artifacts"):  # folders it writes must be volumes, or they vanish
            if ctx.params.get(key) is not None:
                assert str(ctx.params[key]) in mounts, f"{name}: {key}={ctx.params[key]} is not a volume"


def test_service_command_with_a_typo_fails():
    """The parser the test above relies on rejects unknown options (no resilient parsing)."""
    with pytest.raises(typer.TyperException, match="hots"):  # typer's (vendored) click.UsageError
        parse_cli(["dashboard", "--hots", "0.0.0.0"])


# -------------------------------------------------------------------------------- Dockerfile
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_entrypoint_is_the_console_script():
    (entry,) = [arg for op, arg in dockerfile() if op == "ENTRYPOINT"]
    assert json.loads(entry) == ["stl-tune"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, attr = scripts["stl-tune"].split(":")
    assert isinstance(getattr(importlib.import_module(module), attr), typer.Typer)


def test_dockerfile_base_matches_torch_pin_and_extras_exist():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (base,) = [arg for op, arg in dockerfile() if op == "FROM"]
    m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", base)
    assert m, f"unexpected base image {base}"
    (pin,) = [d for d in project["dependencies"] if re.match(r"torch\s*==", d)]
    assert pin.split("==")[1].strip() == m[1], "the base image's torch must satisfy pyproject's pin"
    installs = " ".join(arg for op, arg in dockerfile() if op == "RUN" and "pip install" in arg)
    extras = re.search(r"\.\[([\w,-]+)\]", installs)[1].split(",")
    assert "postgres" in extras and set(extras) <= set(project["optional-dependencies"])
    for op, arg in dockerfile():
        if op == "COPY":
            *sources, _ = arg.split()
            assert all((ROOT / s).exists() for s in sources), f"COPY {arg}: missing source"
