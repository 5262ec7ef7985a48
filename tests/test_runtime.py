"""gnn_align.runtime: keeping freed memory is asked for by the programs (gnn-align run as a command,
train.py), never by a library call or by ``cli.main`` given its arguments, and it is recorded."""

import subprocess
import sys
import textwrap

import pytest

from gnn_align import runtime
from gnn_align.cli import main


def test_keep_freed_memory_takes_effect_on_glibc_and_is_recorded():
    # in a subprocess: the setting is process-wide, and this test process must not change
    code = textwrap.dedent("""
        import platform, gnn_align
        from gnn_align.provenance import provenance
        before = gnn_align.runtime.freed_memory_kept(), provenance([])["freed_memory_kept"]
        ok = gnn_align.keep_freed_memory()
        after = gnn_align.runtime.freed_memory_kept(), provenance([])["freed_memory_kept"]
        print(platform.libc_ver()[0], before, ok, after)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "glibc":
        pytest.skip("not glibc: keep_freed_memory changes nothing there")
    assert out[1:] == ["(False,", "False)", "True", "(True,", "True)"]


def test_only_the_command_line_program_keeps_freed_memory(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda *a: calls.append(a) or True)
    assert main(["demo", "--no-such-option"]) == 2  # a caller's process: left alone
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["gnn-align", "demo", "--no-such-option"])
    assert main() == 2  # run as the program
    assert len(calls) == 1
    assert not runtime.freed_memory_kept()  # the stub ran, not the real setting
