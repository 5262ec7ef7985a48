"""Neural network components of the learned aligner."""

from .conv import NetConv
from .encoder import NetEncoder, sinusoidal
from .head import MatchingHead, group_rows, pool_groups
from .probe import ProbePass
from .weight_conv import WeightConv

__all__ = ["MatchingHead", "NetConv", "NetEncoder", "ProbePass", "WeightConv", "group_rows", "pool_groups",
           "sinusoidal"]
