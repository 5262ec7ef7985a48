"""Model zoos: populations of trained networks, stored as safetensors shards plus a JSON manifest."""

from .batched import StackedForward, evaluate, init_states, stable_seed, stack_states, train_networks, unstack_state
from .storage import ZooError, load_manifest, read_shard, write_json, write_shard

__all__ = ["StackedForward", "ZooError", "evaluate", "init_states", "load_manifest", "read_shard",
           "stable_seed", "stack_states", "train_networks", "unstack_state", "write_json", "write_shard"]
