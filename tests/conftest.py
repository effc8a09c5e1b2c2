"""Shared test settings: hypothesis profiles.

``ci`` (the default) prints a reproduction blob for every failing example and
has no per-example deadline, because two shared cores make timings noisy and a
deadline flake is not a bug. Choose another profile with the environment
variable ``HYPOTHESIS_PROFILE``: ``dev`` runs fewer examples while iterating,
``thorough`` many more for a long soak, ``long`` 100,000 per test (the fuzz run).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=20)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=2000)
# The long fuzz run recorded in SECURITY.md: >= 100,000 cases per decoder (tests/fuzz).
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=100_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
