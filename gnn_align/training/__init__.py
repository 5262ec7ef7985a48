"""What training an aligner needs beyond the model: resumable checkpoints, data-parallel ranks, and
command lines generated from a dataclass config.

* :mod:`.checkpoint`: training checkpoints that resume bit for bit, written atomically, checksummed;
* :mod:`.distributed`: ``torch.distributed`` + DDP, one process per rank, the data-parallel contract;
* :mod:`.runconfig`: a typed ``@dataclass`` config turned into a command line, with presets and JSON files.

``train.py`` (at the repository root) is their user; nothing below the studies imports them.
"""
