"""The demo command proves function preservation and exits non-zero when a check fails."""

import json

from gnn_align import cli


def test_demo_reports_preserved_function(capsys):
    assert cli.main(["demo", "mlp", "resnet-bn", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["network"] for r in rows] == ["mlp", "resnet-bn"]
    for r in rows:
        assert r["ok"] and r["graph_round_trip_exact"]
        assert r["max_output_change"] <= 1e-10 < r["max_weight_change"]


def test_demo_rejects_unknown_network(capsys):
    assert cli.main(["demo", "transformer"]) == 2
    assert "unknown network 'transformer'" in capsys.readouterr().err
