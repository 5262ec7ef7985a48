"""Model zoos: populations of trained networks, stored as safetensors shards plus a JSON manifest."""

from .augment import augment
from .batched import StackedForward, evaluate, init_states, stable_seed, stack_states, train_networks, unstack_state
from .pairs import PlantedPair, PlantedPairs, independent_pairs, member_weights, planted_pair, sample_networks
from .storage import ZooError, load_manifest, read_shard, write_shard

__all__ = ["ModelZoo", "PlantedPair", "PlantedPairs", "StackedForward", "ZooError", "augment", "evaluate",
           "independent_pairs", "init_states", "load_manifest", "member_weights", "planted_pair", "read_shard",
           "sample_networks",
           "stable_seed", "stack_states", "train_networks", "unstack_state", "write_shard"]


def __getattr__(name: str):
    if name == "ModelZoo":  # imports torch_geometric: only when a zoo is opened
        from .dataset import ModelZoo

        return ModelZoo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
