"""Neural network components of the learned aligner."""

from .conv import NetConv
from .encoder import NetEncoder, sinusoidal
from .head import MatchingHead, pool_groups
from .probe import ProbePass
from .weight_conv import WeightConv

__all__ = ["MatchingHead", "NetConv", "NetEncoder", "ProbePass", "WeightConv", "pool_groups", "sinusoidal"]
