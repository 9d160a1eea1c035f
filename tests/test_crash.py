"""A bounded sample of the crash harness (benchmarks/crash_harness.py has the full counts).

SIGKILL at write boundaries of `ingest expression` and `index`, and at random times of `embed`:
the atlas stays readable, the re-run succeeds, and ends in the state of an uninterrupted run
with nothing left over. Marked slow (CI runs it in its own step).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _harness():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "crash_harness.py"
    spec = importlib.util.spec_from_file_location("crash_harness", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    harness = _harness()
    work = tmp_path_factory.mktemp("crash")
    return harness, harness.prepare(work), work


@pytest.mark.parametrize("name, n_random, max_boundaries", [("ingest expression", 0, 12), ("index", 0, 12),
                                                            ("embed", 3, 0), ("remove", 0, 8)])
def test_kills_leave_a_readable_atlas_and_resume_to_the_same_state(prepared, name, n_random, max_boundaries):
    harness, states, work = prepared
    scenario = next(s for s in harness.SCENARIOS if s.name == name)
    outcome = harness.run_scenario(scenario, states, work, n_random=n_random, max_boundaries=max_boundaries)
    for kind in ("boundaries", "random"):
        counts = outcome[kind]
        assert counts["unreadable"] == counts["failed_resumes"] == counts["different_final_states"] == 0, counts["examples"]
        assert counts["leftovers_after_rerun"] == 0, counts["examples"]
    assert outcome["boundaries"]["kills"] >= min(max_boundaries, 1) or outcome["random"]["kills"] >= 1
