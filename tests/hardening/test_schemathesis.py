"""schemathesis against ``/openapi.json`` of a running node: no 5xx, responses match the schema.

A one-validator ``LocalTestnet`` (one real node process, free ports, killed at
the end) serves its API; the schemathesis CLI (pinned in the ``test`` extra)
reads the node's own OpenAPI description and sends generated requests —
examples, boundary ("coverage") cases and random ("fuzzing") ones, valid and
invalid — to every operation.

Checks run: every check schemathesis has. Ids, keys and hashes carry their
hex ``pattern`` and lengths in the description, so "a request the schema
allows is accepted" (``positive_data_acceptance``) holds for every operation
but one: ``POST /v1/txs``, whose ``tx`` must be a correctly signed tx, which no
schema can describe (a schema-valid hex string is rightly refused with 400);
that one check is off for that one operation (``CONFIG``). The rest hold: no
5xx, documented status codes and content types, bodies matching their
schemas, invalid data refused, 405 with ``Allow``, and so on. The seed and the
example budget are printed; ``MEDLEDGER_SCHEMATHESIS_EXAMPLES`` raises the budget.
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
# A valid tx is a signed one: no schema can say so, so schema-valid bodies are refused.
CONFIG = """\
[[operations]]
include-path = "/v1/txs"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""


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
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            f"{api_url}/openapi.json",  # every check is on by default (--checks would
            # override the per-operation switch in CONFIG)
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
