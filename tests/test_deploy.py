"""docker-compose.yml without Docker: the services, their wiring, and that every command is a real
`metalic` subcommand that parses (this machine has the Docker client but no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from metalic.cli import _build_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_ports_health_checks_and_gpus(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "ray-head", "gpu-worker"}
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"]) and pg["volumes"][0].startswith("pgdata:")
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    head = services["ray-head"]
    assert "8000:8000" in head["ports"] and "6379:6379" in head["ports"]
    assert "/readyz" in " ".join(head["healthcheck"]["test"])
    assert head["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    worker = services["gpu-worker"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and "ports" not in worker  # scalable: --scale gpu-worker=N
    for name in ("migrate", "ray-head", "gpu-worker"):
        env = services[name]["environment"]
        assert env["METALIC_DATABASE_URL"].startswith("postgresql+psycopg://metalic:metalic@postgres:5432/")
    assert set(compose["volumes"]) == {"pgdata", "home"}


def test_every_command_is_a_metalic_subcommand_that_parses(compose):
    parser, _ = _build_parser()
    commands = [s["command"] for s in compose["services"].values() if "command" in s]
    assert len(commands) == 3
    for command in commands:
        assert command[0] == "metalic"
        args = parser.parse_args(command[1:])  # raises on an unknown subcommand or flag
        assert args.command in {"db", "serve", "worker"}
    serve = parser.parse_args(compose["services"]["ray-head"]["command"][1:])
    assert (serve.host, serve.port, serve.ray_head) == ("0.0.0.0", 8000, 6379)


def test_the_image_installs_a_cuda_build_of_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cu" in dockerfile and '".[service]"' in dockerfile
