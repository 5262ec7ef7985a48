"""Run issue 18's catalogue of hostile inputs and print one table: case | expected | observed.

The catalogue is the tests ``tests/test_hostile_*.py``: one test (or parametrised case) per bad
input or fault, named after the issue's item (``test_itemNN_...``), whose docstring states the
expected behaviour. They run in one pytest session here; every case's outcome is read from its
report:

- handled cleanly: the test passed (the library did what the docstring says);
- mishandled: it failed; the observed column holds the first line of the failure;
- not tried: it was skipped (the reason is shown, e.g. no user namespaces for a read-only mount);
- data lost: a mishandled case of items 1-6, the issue's "data lost or silently wrong" items;
- traceback: a case in which an exception other than a failed assertion escaped from the code under
  test, or whose failure report or captured output holds a Python traceback ("Traceback"): a user
  would have seen one. (The CLI cases assert one-line errors without "Traceback" themselves.)

Items of the issue without any case are listed, so that a missing test cannot pass unnoticed.
Writes ``OUT/catalogue.json`` and ``OUT/catalogue.md`` (with provenance).

Usage: python benchmarks/hostile_inputs/catalogue.py [OUT] [--tests FILE ...] [PYTEST ARGS]
       (default OUT benchmarks/hostile_inputs; other arguments go to pytest)
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: the issue's numbered items, and those whose mishandling loses or silently changes data
ITEMS = range(1, 20)
DATA_ITEMS = range(1, 7)
_ITEM = re.compile(r"test_item(\d+)_")


def _item(name: str) -> int | None:
    m = _ITEM.search(name)
    return int(m.group(1)) if m else None


def _expected(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


class Collector:
    """pytest plugin: one record per test case, from its setup, call and teardown reports."""

    def __init__(self):
        self.cases: dict = {}

    def pytest_collection_modifyitems(self, items):
        for it in items:
            self.cases[it.nodeid] = {"case": it.nodeid.split("::", 1)[-1], "file": it.nodeid.split("::")[0],
                                     "item": _item(it.name), "expected": _expected(getattr(it, "obj", None)),
                                     "outcome": None, "seconds": 0.0, "detail": "", "traceback": False}

    def pytest_exception_interact(self, node, call, report):
        case = self.cases.get(getattr(node, "nodeid", None))
        if case is not None and not call.excinfo.errisinstance((AssertionError, pytest.fail.Exception)):
            case["traceback"] = True  # an unexpected exception reached the caller
            case["raised"] = call.excinfo.typename

    def pytest_runtest_logreport(self, report):
        case = self.cases.get(report.nodeid)
        if case is None:
            return
        case["seconds"] += report.duration
        text = "\n".join([report.longreprtext or ""] + [content for _, content in report.sections])
        case["traceback"] = case["traceback"] or "Traceback" in text
        if report.failed and case["outcome"] != "failed":
            case["outcome"] = "failed"
            crash = getattr(report.longrepr, "reprcrash", None)
            first = crash.message if crash is not None else (report.longreprtext or "").strip()
            case["detail"] = (f"{report.when}: " if report.when != "call" else "") + first.strip().split("\n")[0]
        elif report.skipped and case["outcome"] is None:
            case["outcome"] = "skipped"
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            case["detail"] = reason.removeprefix("Skipped: ")
        elif report.passed and report.when == "call" and case["outcome"] is None:
            case["outcome"] = "passed"


def summarise(cases: list) -> dict:
    """Counts of the closing note: cases tried, handled cleanly, mishandled, data lost, tracebacks."""
    tried = [c for c in cases if c["outcome"] in ("passed", "failed")]
    bad = [c for c in tried if c["outcome"] == "failed"]
    covered = {c["item"] for c in cases if c["item"] is not None}
    return {"cases": len(cases), "tried": len(tried), "handled_cleanly": len(tried) - len(bad),
            "mishandled": len(bad), "not_tried": len(cases) - len(tried),
            "data_lost": sum(c["item"] in DATA_ITEMS for c in bad),
            "tracebacks": sum(c["traceback"] for c in cases),
            "items_without_a_case": [i for i in ITEMS if i not in covered],
            "cases_without_an_item": [c["case"] for c in cases if c["item"] is None]}


def observed(c: dict) -> str:
    """The observed column: as expected, mishandled (first line of the failure) or not tried (why)."""
    if c["outcome"] == "passed":
        text = f"as expected ({c['seconds']:.1f} s)"
    elif c["outcome"] == "skipped":
        text = f"not tried: {c['detail']}"
    else:
        text = f"**mishandled**: {c['detail']}" if c["outcome"] == "failed" else "not run"
    return text + ("; **a traceback reached the user**" if c["traceback"] else "")


def markdown(result: dict) -> str:
    from gnn_align.studies.report import markdown_table  # gnn_align is imported after the catalogue ran

    cell = lambda s: s.replace("|", "\\|").replace("\n", " ")
    intro = (f"Issue 18's catalogue of hostile inputs: {len(result['cases'])} cases of {', '.join(result['files'])}, "
             f"run in {result['seconds']:.0f} s.")
    lines = [intro, "", markdown_table(["case", "expected", "observed"],
                                       [[f"`{cell(c['case'])}`", cell(c["expected"]), cell(observed(c))]
                                        for c in result["cases"]])]
    s = result["counts"]
    closing = (f"Cases tried: {s['tried']} (of {s['cases']}; {s['not_tried']} not tried); handled cleanly: "
               f"{s['handled_cleanly']}; mishandled: {s['mishandled']}; data lost: {s['data_lost']} (must be 0); "
               f"tracebacks: {s['tracebacks']} (must be 0).")
    lines += ["", closing]
    if s["items_without_a_case"]:
        lines.append(f"Items of issue 18 without a case: {', '.join(map(str, s['items_without_a_case']))}.")
    if s["cases_without_an_item"]:
        lines.append(f"Cases not named after an item: {', '.join(s['cases_without_an_item'])}.")
    return "\n".join(lines) + "\n"


def main(argv: list | None = None) -> int:
    """Run the catalogue, write the report; exit status 0 when every case was handled cleanly, no
    traceback was seen and every item has a case, 1 otherwise, 2 when pytest could not run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", nargs="?", type=Path, default=REPO / "benchmarks" / "hostile_inputs")
    p.add_argument("--tests", nargs="+", type=Path, help="test files (default tests/test_hostile_*.py)")
    args, extra = p.parse_known_args(argv)  # anything else goes to pytest
    out = args.out.resolve()
    files = [str(f.resolve()) for f in args.tests] if args.tests else \
        sorted(str(f.relative_to(REPO)) for f in (REPO / "tests").glob("test_hostile_*.py"))
    os.chdir(REPO)  # the tests' relative paths and node ids
    collector = Collector()
    t0 = time.perf_counter()
    code = pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(REPO), *files, *extra],
                       plugins=[collector])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        print(f"catalogue.py: pytest could not run the catalogue (exit {int(code)})", file=sys.stderr)
        return 2
    from gnn_align.provenance import provenance
    from gnn_align.studies.report import write_report

    cases = sorted(collector.cases.values(), key=lambda c: (c["item"] or 99, c["file"], c["case"]))
    result = {"files": files, "seconds": time.perf_counter() - t0, "counts": summarise(cases), "cases": cases,
              "provenance": provenance()}
    write_report(out, "catalogue", result, markdown(result), echo=True)
    s = result["counts"]
    return 0 if s["mishandled"] == 0 and s["tracebacks"] == 0 and not s["items_without_a_case"] else 1


if __name__ == "__main__":
    sys.exit(main())
