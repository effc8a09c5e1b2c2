"""Fixtures of the docker tests: the images (built or reused once per session)
and a per-test record of containers, networks and volumes that is always
cleaned up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import (
    FAKE_IMAGE,
    NODE_IMAGE,
    PROM_IMAGE,
    PY,
    REPO,
    Images,
    Resources,
    docker_unavailable_reason,
    run,
)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """Build or reuse the images with testnet/images.sh, as an operator would.

    Its timings go to stderr (``pytest -s`` shows them). Also builds the
    stand-in node (tests/docker/fake_node.py on top of the node image), removed
    at the end of the session.
    """
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    done = subprocess.run(
        ["bash", str(REPO / "testnet" / "images.sh"), "all"],
        env={**os.environ, "PYTHON": sys.executable},  # wheels from this test run's Python
        capture_output=True,
        text=True,
        timeout=1800,
    )
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        pytest.fail(f"testnet/images.sh failed ({done.returncode}):\n{done.stderr[-3000:]}")
    ctx = tmp_path_factory.mktemp("fake-node-image")
    shutil.copy(Path(__file__).with_name("fake_node.py"), ctx / "fake_node.py")
    (ctx / "Dockerfile").write_text(
        f"FROM {NODE_IMAGE}\n"
        "COPY fake_node.py /opt/fake_node.py\n"
        f'ENTRYPOINT ["{PY}", "/opt/fake_node.py"]\n'
    )
    run(["docker", "build", "-q", "-t", FAKE_IMAGE, str(ctx)])
    try:
        yield Images(node=NODE_IMAGE, prometheus=PROM_IMAGE, fake_node=FAKE_IMAGE)
    finally:
        run(["docker", "image", "rm", FAKE_IMAGE], check=False)


@pytest.fixture
def res() -> Iterator[Resources]:
    r = Resources(prefix=f"medledger-test-{uuid.uuid4().hex[:8]}")
    try:
        yield r
    finally:
        r.cleanup()
