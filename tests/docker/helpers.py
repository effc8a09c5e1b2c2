"""Shared pieces of the docker tests: finding the engine and compose, running
commands, waiting for conditions, and a reader for the YAML subset that
node/compose.py writes (the project has no YAML dependency)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
NODE_IMAGE = os.environ.get("MEDLEDGER_NODE_IMAGE", "medledger-node:dev")
PROM_IMAGE = os.environ.get("MEDLEDGER_PROMETHEUS_IMAGE", "medledger-prometheus:dev")
FAKE_IMAGE = "medledger-fakenode:test"
PY = "/opt/medledger/bin/python"


def docker_unavailable_reason() -> str | None:
    """Why docker tests cannot run here, or None when the engine answers."""
    if shutil.which("docker") is None:
        return "docker CLI not installed"
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "Docker engine did not answer `docker info` within 30 s"
    if done.returncode != 0:
        return f"Docker engine not reachable (`docker info` failed: {done.stderr.strip()[:200]})"
    return None


def compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) when present, else `docker-compose`, else None."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    return None


def run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it fails."""
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {done.returncode}\nstdout: {done.stdout[-2000:]}\n"
            f"stderr: {done.stderr[-2000:]}"
        )
    return done


def wait_for(condition: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Images:
    node: str
    prometheus: str
    fake_node: str


@dataclass
class Resources:
    """Names of what a test created, removed by the fixture whatever happens."""

    prefix: str
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    def container(self, what: str, *args: str) -> str:
        name = self.name(what)
        self.containers.append(name)
        run(["docker", "run", "-d", "--name", name, *args])
        return name

    def network(self, what: str) -> str:
        name = self.name(what)
        self.networks.append(name)
        run(["docker", "network", "create", name])
        return name

    def volume(self, what: str) -> str:
        name = self.name(what)
        self.volumes.append(name)
        run(["docker", "volume", "create", name])
        return name

    def cleanup(self) -> None:
        for c in self.containers:
            run(["docker", "rm", "-f", "-v", c], check=False)
        for n in self.networks:
            run(["docker", "network", "rm", n], check=False)
        for v in self.volumes:
            run(["docker", "volume", "rm", "-f", v], check=False)


def inspect(obj: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(run(["docker", "inspect", obj]).stdout)
    return data[0]


def health(container: str) -> str:
    """The container's health status; fails at once if it has exited."""
    state = inspect(container)["State"]
    if not state["Running"]:
        logs = run(["docker", "logs", "--tail", "40", container], check=False)
        raise AssertionError(f"{container} exited: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")
    status: str = state.get("Health", {}).get("Status", "none")
    return status


def http_get(url: str) -> httpx.Response | None:
    """GET, or None while nothing answers."""
    try:
        return httpx.get(url, timeout=2.0)
    except httpx.HTTPError:
        return None


def prom_ready(base: str) -> bool:
    r = http_get(base + "/-/ready")
    return r is not None and r.status_code == 200


def prom_targets(base: str) -> list[dict[str, Any]]:
    """Prometheus's own view of its scrape targets (``/api/v1/targets``)."""
    r = httpx.get(base + "/api/v1/targets", timeout=5.0)
    r.raise_for_status()
    active: list[dict[str, Any]] = r.json()["data"]["activeTargets"]
    return active


def prom_query(base: str, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(base + "/api/v1/query", params={"query": promql}, timeout=5.0)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def free_port_block(count: int) -> int:
    """A base port whose ``count`` consecutive ports are free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 60000)
        if all(_port_free(p) for p in range(base, base + count)):
            return base
    raise AssertionError("no block of free ports found")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def project_leftovers(project: str) -> list[str]:
    """Containers, volumes and networks compose still holds for ``project``."""
    label = f"label=com.docker.compose.project={project}"
    found = []
    for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
        out = run(["docker", *kind, "-q", "--filter", label]).stdout.split()
        found += [f"{kind[0]}:{x}" for x in out]
    return found


@contextmanager
def compose_project(
    tool: Sequence[str], compose_file: Path, env: dict[str, str]
) -> Iterator[list[str]]:
    """``up -d`` a compose file under a fresh project name; ``down -v`` whatever happens.

    Yields the compose command prefix (tool, project, file) for further calls.
    After teardown nothing of the project may remain.
    """
    project = f"medledgertest{uuid.uuid4().hex[:8]}"
    cmd = [*tool, "-p", project, "-f", str(compose_file)]
    full_env = {**os.environ, **env}
    try:
        up = subprocess.run(
            [*cmd, "up", "-d"], env=full_env, capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, up.stderr[-3000:]
        yield cmd
    finally:
        down = subprocess.run(
            [*cmd, "down", "-v", "--remove-orphans"],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert down.returncode == 0, down.stderr[-2000:]
    assert project_leftovers(project) == []


# -- the YAML subset of node/compose.py ------------------------------------------------
#
# Block mappings and sequences, two-space indents, JSON-quoted strings, ints,
# true/false, {} and []. Anything else is an error, so a change in the emitter
# that leaves this subset makes the tests fail rather than parse loosely.

_Line = tuple[int, str]


def parse_yaml_subset(text: str) -> Any:
    lines: list[_Line] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        assert "\t" not in raw[:indent], f"tab in indentation: {raw!r}"
        lines.append((indent, stripped))
    assert lines, "empty document"
    value, end = _block(lines, 0, lines[0][0])
    assert end == len(lines), f"unparsed from line {end}: {lines[end]!r}"
    return value


def _scalar(text: str) -> Any:
    if text.startswith('"'):
        value, end = json.JSONDecoder().raw_decode(text)
        assert end == len(text), f"trailing text after string: {text!r}"
        return value
    if text in ("true", "false"):
        return text == "true"
    if text == "{}":
        return {}
    if text == "[]":
        return []
    assert text.lstrip("-").isdigit(), f"not a scalar of the subset: {text!r}"
    return int(text)


def _split_key(text: str) -> tuple[str, str]:
    if text.startswith('"'):
        key, end = json.JSONDecoder().raw_decode(text)
        rest = text[end:]
    else:
        key, colon, rest = text.partition(":")
        assert colon, f"not a mapping entry: {text!r}"
        rest = ":" + rest
    assert rest.startswith(":"), f"no colon after key in {text!r}"
    rest = rest[1:]
    assert rest == "" or rest.startswith(" "), f"no space after colon in {text!r}"
    return str(key), rest.strip()


def _opens_mapping(text: str) -> bool:
    if text.startswith('"'):
        _, end = json.JSONDecoder().raw_decode(text)
        return text[end:].startswith(":")
    return text not in ("{}", "[]") and ":" in text


def _block(lines: list[_Line], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1].startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _mapping(lines: list[_Line], i: int, indent: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        key, rest = _split_key(lines[i][1])
        assert key not in out, f"duplicate key {key!r}"
        i += 1
        if rest:
            out[key] = _scalar(rest)
        else:
            assert i < len(lines) and lines[i][0] > indent, f"empty block under {key!r}"
            out[key], i = _block(lines, i, lines[i][0])
    assert i == len(lines) or lines[i][0] < indent, f"bad indentation at {lines[i]!r}"
    return out, i


def _sequence(lines: list[_Line], i: int, indent: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
        rest = lines[i][1][2:]
        if not _opens_mapping(rest):
            out.append(_scalar(rest))
            i += 1
        else:
            # "- key: value" opens a mapping whose keys sit two columns in.
            lines[i] = (indent + 2, rest)
            item, i = _mapping(lines, i, indent + 2)
            out.append(item)
    assert i == len(lines) or lines[i][0] < indent, f"bad indentation at {lines[i]!r}"
    return out, i
