"""The learned aligner's architecture settings: :class:`AlignerConfig`, one set of defaults.

:class:`~gnn_align.aligner.GNNAligner`, :class:`~gnn_align.nn.NetEncoder`, ``train.py``'s ``Config``,
the memory estimate (:mod:`gnn_align.memory`) and the shipped aligners' metadata all read their
settings from here, under these names. Files written under older names (``train.py``'s ``layers``)
are read through :func:`upgrade_keys`, the one place that maps them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import GNNAlignError

#: message-passing layers the encoder can run: ``weight`` (:class:`~gnn_align.nn.WeightConv`, dense, no
#: edge states) or ``edge`` (:class:`~gnn_align.nn.NetConv`, sparse, node and edge states)
CONVS = ("weight", "edge")

#: old setting name -> today's (``train.py`` runs and the shipped metadata once said ``layers``)
RENAMED = {"layers": "num_layers"}


@dataclass(frozen=True)
class AlignerConfig:
    """Every architecture setting of a :class:`~gnn_align.aligner.GNNAligner` (its defaults are
    ``train.py``'s).

    Attributes:
        hidden: width of the encoder's node states.
        num_layers: message-passing rounds after the probe pass.
        conv: the message-passing layer, ``weight`` (:class:`~gnn_align.nn.WeightConv`) or ``edge``
            (:class:`~gnn_align.nn.NetConv`); see :data:`CONVS`.
        scale_invariant: divide the node parameters by their RMS over their layer
            (:func:`~gnn_align.nn.encoder.nodeset_normalize`).
        edge_hidden: width of the edge states (``conv="edge"``).
        head_scale: initial scale ``s`` of the matching head's scores ``s² cos(f_A, f_B)``.
        probes: probe channels of the :class:`~gnn_align.nn.ProbePass` (0: no probe pass).
        edge_dim: edge feature width of the graphs it reads (the longest kernel it can align).
        activation: hidden activation of the networks it aligns (``relu``, ``tanh`` or ``sine``),
            which the probe pass runs them with.
        w0: SIREN's frequency (``activation="sine"``).
        pos_dim: width of each sinusoidal position encoding of the node inputs.
        max_fixed: rows of the probe pass's input and output probe tables (the most input or output
            neurons a network may have).
    """

    hidden: int = 32
    num_layers: int = 0
    conv: str = "weight"
    scale_invariant: bool = True
    edge_hidden: int = 4
    head_scale: float = 5.0
    probes: int = 128
    edge_dim: int = 1
    activation: str = "relu"
    w0: float = 1.0
    pos_dim: int = 16
    max_fixed: int = 1024

    def __post_init__(self):
        if self.conv not in CONVS:
            raise GNNAlignError(f"unknown conv '{self.conv}'; choose from {', '.join(CONVS)}")

    @classmethod
    def names(cls) -> tuple:
        """The settings' names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (what a run's ``config.json`` records as ``aligner``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> AlignerConfig:
        """The config of a dict of settings (old names accepted, see :func:`upgrade_keys`); settings it
        lacks take the defaults.

        Raises:
            GNNAlignError: one line naming an unknown setting.
        """
        return cls(**_checked(upgrade_keys(d)))

    def replace(self, **changes) -> AlignerConfig:
        """A copy with ``changes`` (names as :meth:`from_dict` takes them).

        Raises:
            GNNAlignError: one line naming an unknown setting.
        """
        return dataclasses.replace(self, **_checked(upgrade_keys(changes))) if changes else self


def upgrade_keys(d: Mapping) -> dict:
    """``d`` with the old names of :data:`RENAMED` replaced by today's (other keys unchanged).

    Raises:
        GNNAlignError: an old name and its new one both given, with different values.
    """
    out = dict(d)
    for old, new in RENAMED.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise GNNAlignError(f"both '{old}' ({value!r}) and its new name '{new}' ({out[new]!r}) are given")
            out.setdefault(new, value)
    return out


def _checked(d: dict) -> dict:
    unknown = [k for k in d if k not in AlignerConfig.names()]
    if unknown:
        raise GNNAlignError(f"unknown aligner setting '{unknown[0]}'; known: {', '.join(AlignerConfig.names())}")
    return d


def resolve(config: AlignerConfig | None, overrides: Mapping) -> AlignerConfig:
    """``config`` (default :class:`AlignerConfig` ()) with ``overrides``: what the modules built from a
    config take as ``(config=None, **overrides)``.

    Raises:
        TypeError: ``config`` is not an AlignerConfig (e.g. a width passed positionally).
        GNNAlignError: an unknown setting, named.
    """
    if config is None:
        config = AlignerConfig()
    elif not isinstance(config, AlignerConfig):
        raise TypeError(f"config must be an AlignerConfig, got {type(config).__name__} {config!r}; "
                        "pass settings by name, e.g. GNNAligner(hidden=64)")
    return config.replace(**overrides)
