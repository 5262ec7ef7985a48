"""benchmarks/hostile_inputs/catalogue.py counts what it should: on a synthetic catalogue with a passing,
a data-losing, a raising, a traceback-printing, a skipped and an unnamed case."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = '''
import sys
import pytest


def test_item01_ok():
    """Passes."""


def test_item03_loses():
    """Keeps the data.

    More text that is not part of the expected column.
    """
    assert 1 + 1 == 3, "wrote an all-NaN model"


def test_item12_raises():
    """Fails in one line."""
    raise RuntimeError("boom")


def test_item14_prints():
    """Prints no traceback."""
    print("Traceback (most recent call last):", file=sys.stderr)


def test_item11_skipped():
    """Needs a namespace."""
    pytest.skip("no user namespaces")


def test_helper():
    """Not an item."""
'''


def test_catalogue_counts_data_loss_tracebacks_skips_and_missing_items(tmp_path):
    """Counts: 6 cases, 5 tried, 3 handled, 2 mishandled, 1 data lost (item 3), 2 tracebacks (a raised
    RuntimeError, a printed traceback); item 2 listed without a case; exit status 1; one table row per case."""
    (tmp_path / "test_cases.py").write_text(CASES)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "hostile_inputs" / "catalogue.py"),
                        str(tmp_path / "out"), "--tests", str(tmp_path / "test_cases.py")],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    res = json.loads((tmp_path / "out" / "catalogue.json").read_text())
    counts = res["counts"]
    assert {k: counts[k] for k in ("cases", "tried", "handled_cleanly", "mishandled", "not_tried", "data_lost",
                                   "tracebacks")} == {"cases": 6, "tried": 5, "handled_cleanly": 3, "mishandled": 2,
                                                      "not_tried": 1, "data_lost": 1, "tracebacks": 2}
    assert 2 in counts["items_without_a_case"] and 3 not in counts["items_without_a_case"]
    assert counts["cases_without_an_item"] == ["test_helper"]
    table = (tmp_path / "out" / "catalogue.md").read_text()
    assert "| `test_item03_loses` | Keeps the data. | **mishandled**: AssertionError: wrote an all-NaN model" in table
    assert "| `test_item11_skipped` | Needs a namespace. | not tried: no user namespaces |" in table
    assert ("| `test_item14_prints` | Prints no traceback. | as expected (0.0 s); **a traceback reached the user** |"
            in table)
    assert "data lost: 1 (must be 0); tracebacks: 2 (must be 0)" in table
