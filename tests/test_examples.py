"""Every script in examples/ runs (CI runs them through this test) and prints what it promises."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
EXPECT = {"merge_digits.py": "aligned (gnn)", "align_resnets.py": "function check"}


def test_examples_are_known():
    assert {p.name for p in EXAMPLES} == set(EXPECT)


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script):
    r = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert EXPECT[script.name] in r.stdout
