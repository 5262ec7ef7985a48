"""Studies of alignment methods on the networks of a zoo, and the reports they write.

* :mod:`.bench`: the benchmark harness (every method on fixed, seeded test pairs: barriers, AUC,
  seconds) and the speed comparison of an aligner against weight matching;
* :mod:`.warmstart`: how fast the optimisers converge when started from a learned prediction;
* :mod:`.report`: the one writer of a study's JSON, Markdown and PNG (atomically) and the one
  Markdown table builder, :func:`~gnn_align.studies.report.markdown_table`.

The studies sit above the library: they use the zoo, the methods and the metrics; no core module
imports them. Importing this package imports nothing (``report`` needs no torch).
"""
