"""The method registry: Method records, a read-only base registry, method_table for learned aligners."""

import dataclasses

import pytest
import torch

from gnn_align import methods
from gnn_align.aligner import GNNAligner
from gnn_align.api import ALIGN_METHODS
from gnn_align.methods import METHODS, Method, aligner_methods, method_names, method_table


def test_the_base_registry_is_read_only():
    before = dict(METHODS)
    with pytest.raises(TypeError):
        METHODS["magic"] = Method("magic", lambda c: {})
    with pytest.raises(TypeError):
        del METHODS["wm"]
    with pytest.raises(AttributeError):
        METHODS.update(magic=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS["wm"].needs = "everything"
    assert dict(METHODS) == before
    assert not hasattr(methods, "register_method") and not hasattr(methods, "register_aligner")


def test_the_base_registry_holds_method_records():
    assert list(METHODS) == ["naive", "wm", "am", "sinkhorn", "ste", "auto"]
    for name, m in METHODS.items():
        assert isinstance(m, Method) and m.name == name and callable(m.fn) and isinstance(m.needs, str)
    assert METHODS["wm"].needs == "none" and "train split" in METHODS["am"].needs


def test_method_table_is_a_new_mapping_and_leaves_the_registry_alone():
    torch.manual_seed(0)
    al = GNNAligner(hidden=8, num_layers=0, edge_dim=1, probes=4).eval()
    before = dict(METHODS)
    table = method_table(al)
    assert list(table) == list(method_names()) == ["naive", "wm", "am", "sinkhorn", "ste", "auto", "gnn", "gnn+wm",
                                                  "gnn+sinkhorn", "gnn+ste"]
    assert table["auto"] is not METHODS["auto"] and table["wm"] is METHODS["wm"]
    assert dict(METHODS) == before and method_table() == METHODS and method_table() is not METHODS
    with pytest.raises(TypeError):
        table["x"] = table["gnn"]
    both = method_table(al, name="other", base=table)  # a second aligner under its own name
    assert {"gnn", "other", "other+ste"} <= set(both) and "other" not in table
    assert list(aligner_methods(al, "x")) == ["x", "x+wm", "x+sinkhorn", "x+ste", "auto"]


def test_align_methods_come_from_the_registry():
    assert set(ALIGN_METHODS) == set(method_names()) - {"naive"}
