"""The commands of the README and the docs run as written.

Fenced blocks marked ``<!-- readme-test: fast -->`` on the line before the fence run in the fast set,
``<!-- readme-test: slow -->`` in the slow set (with every marked block before them in the same file,
in order, in one scratch folder: a later block may use the files an earlier one wrote). Commands that
need a built zoo or minutes of training are not marked.
"""

import pytest

from .helpers import REPO, marked_blocks, run_block

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKED = {doc: marked_blocks(doc.read_text()) for doc in DOCS}


def _run(doc, blocks, tmp_path):
    for i, (_, language, code) in enumerate(blocks):
        r = run_block(language, code, tmp_path)
        assert r.returncode == 0, f"{doc.name}, marked block {i + 1} ({language}) failed:\n{code}\n{r.stderr[-3000:]}"


def test_the_readme_has_marked_blocks_of_both_speeds():
    assert {speed for speed, _, _ in MARKED[REPO / "README.md"]} == {"fast", "slow"}


def test_the_marker_is_found_only_right_before_a_fence():
    text = "<!-- readme-test: fast -->\n```bash\necho hi\n```\n\n<!-- readme-test: slow -->\ntext\n```bash\nls\n```\n"
    assert marked_blocks(text) == [("fast", "bash", "echo hi")]


@pytest.mark.parametrize("doc", [d for d in DOCS if any(s == "fast" for s, _, _ in MARKED[d])],
                         ids=lambda p: p.name)
def test_fast_blocks_run(doc, tmp_path):
    _run(doc, [b for b in MARKED[doc] if b[0] == "fast"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if any(s == "slow" for s, _, _ in MARKED[d])],
                         ids=lambda p: p.name)
def test_all_marked_blocks_run(doc, tmp_path):
    _run(doc, MARKED[doc], tmp_path)
