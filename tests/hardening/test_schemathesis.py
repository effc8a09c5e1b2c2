"""schemathesis against ``/openapi.json`` of a running node: no 5xx, responses match the schema.

A one-validator ``LocalTestnet`` (one real node process, free ports, killed at
the end) serves its API; the schemathesis CLI (pinned in the ``test`` extra)
reads the node's own OpenAPI description and sends generated requests —
examples, boundary ("coverage") cases and random ("fuzzing") ones, valid and
invalid — to every operation.

Checks run: every check schemathesis has except ``positive_data_acceptance``
(a request the schema allows must be accepted): the description types ids and
hashes as plain strings while the API demands lowercase hex of a fixed size,
so a schema-valid ``"0"`` is rightly refused with 400. The rest hold: no 5xx,
documented status codes and content types, bodies matching their schemas,
invalid data refused, 405 with ``Allow``, and so on. The seed and the example
budget are printed; ``MEDLEDGER_SCHEMATHESIS_EXAMPLES`` raises the budget.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.runner import LocalTestnet

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

SEED = 20261127
EXCLUDED = ("positive_data_acceptance",)


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    testnet = LocalTestnet(tmp_path_factory.mktemp("schemathesis"), 1)
    testnet.init()
    with testnet:
        testnet.start_all()
        testnet.wait_ready(timeout=90)
        yield testnet.nodes[0].api_url


def test_schemathesis_finds_no_5xx_and_no_schema_violation(api_url: str, tmp_path: Path) -> None:
    examples = int(os.environ.get("MEDLEDGER_SCHEMATHESIS_EXAMPLES", "25"))
    print(f"schemathesis: seed {SEED}, max examples {examples} per operation, api {api_url}")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{api_url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            ",".join(EXCLUDED),
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(examples),
            "--seed",
            str(SEED),
            "--request-timeout",
            "20",
            "--no-color",
            "--generation-database",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=tmp_path,
    )
    summary = done.stdout[done.stdout.rfind("SUMMARY") :] if "SUMMARY" in done.stdout else ""
    print(summary)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", summary)
    generated = re.search(r"(\d+) generated", summary)
    assert tested is not None and int(tested.group(1)) >= 11, summary  # every route of the API
    assert generated is not None and int(generated.group(1)) >= 100, summary
