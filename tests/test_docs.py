"""The documentation holds together: README length and test command, links that resolve, every folder
under benchmarks/ linked from a doc, and every committed result JSON with its provenance."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from .helpers import REPO, markdown_links

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "benchmarks").glob("*/README.md"))]
PROVENANCE_KEYS = {"command", "commit", "torch", "threads"}
SIDECAR_KEYS = PROVENANCE_KEYS | {"committed_in", "aligner", "aligner_weights_sha256"}


def _targets(doc: Path) -> list:
    """The local paths the Markdown links of ``doc`` point to (anchors dropped, URLs skipped)."""
    return [(doc.parent / t.split("#")[0]).resolve() for t in markdown_links(doc.read_text())
            if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_is_short_and_its_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    command = ('pip install torch==2.13.0 && pip install -e ".[test]" && '
               'ruff check gnn_align tests train.py datasets benchmarks && python -m pytest')
    assert f"```bash\n{command}\n```" in readme
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci and "python -m pytest -m slow" in ci
    assert ci.index(command) < ci.index("python -m pytest -m slow")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_local_link_resolves(doc):
    missing = [str(t) for t in _targets(doc) if not t.exists()]
    assert not missing, f"{doc.relative_to(REPO)} links to missing paths: {missing}"


def _benchmark_files() -> list:
    """The files under benchmarks/ that git tracks or would (not ignored outputs such as chunk folders);
    every file there when git cannot tell."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "benchmarks"],
                            cwd=REPO, capture_output=True, text=True, check=False)
    if listed.returncode == 0 and listed.stdout.strip():
        return sorted(REPO / f for f in listed.stdout.splitlines())
    return sorted(p for p in (REPO / "benchmarks").rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_every_benchmark_folder_is_linked_from_a_doc():
    linked = {t for doc in DOCS for t in _targets(doc)}
    folders = sorted({p.parent for p in _benchmark_files()} - {REPO / "benchmarks"})
    unlinked = [str(p.relative_to(REPO)) for p in folders if p.resolve() not in linked]
    assert not unlinked, f"folders no README.md, docs/*.md or benchmarks/*/README.md links to: {unlinked}"


def test_a_link_check_that_would_catch_an_unlinked_folder(tmp_path):
    doc = tmp_path / "README.md"
    (tmp_path / "linked").mkdir()
    (tmp_path / "orphan").mkdir()
    doc.write_text("See [the study](linked/) and `orphan/` (code, not a link).")
    assert _targets(doc) == [(tmp_path / "linked").resolve()]


def _result_jsons() -> list:
    return [p for p in _benchmark_files() if p.suffix == ".json" and p.name != "provenance.json"]


def _sidecar_entry(path: Path) -> dict | None:
    """The entry for ``path`` in the provenance.json of its folder or of a folder above it in benchmarks/."""
    for folder in path.parents:
        side = folder / "provenance.json"
        if side.is_file():
            entry = json.loads(side.read_text())["files"].get(str(path.relative_to(folder)))
            if entry is not None:
                return entry
        if folder.parent == REPO / "benchmarks" or folder == REPO:
            return None
    return None


@pytest.mark.parametrize("path", _result_jsons(), ids=lambda p: str(p.relative_to(REPO / "benchmarks")))
def test_every_result_json_has_its_provenance(path):
    block = json.loads(path.read_text()).get("provenance")
    if block is not None:
        assert PROVENANCE_KEYS <= set(block), f"{path}: provenance lacks {PROVENANCE_KEYS - set(block)}"
        return
    entry = _sidecar_entry(path)
    assert entry is not None, f"{path}: no provenance block and no entry in a provenance.json sidecar"
    assert SIDECAR_KEYS <= set(entry), f"{path}: sidecar entry lacks {SIDECAR_KEYS - set(entry)}"
