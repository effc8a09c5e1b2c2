"""Print how every fuzz target's cases ended, after the run.

The short CI run uses the default hypothesis profile; the long run is
``HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/fuzz -p no:cacheprovider``
(profile registered in ``tests/conftest.py``) and its summary lines are the
figures recorded in ``SECURITY.md``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tests.fuzz.harness import TALLY, format_tally


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY:
        return
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    examples = settings.get_profile(profile).max_examples
    terminalreporter.section(f"fuzz tally (profile {profile}, max_examples {examples})")
    for line in format_tally():
        terminalreporter.write_line(line)
