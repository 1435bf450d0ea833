"""GGN pipeline: open-world instance segmentation from learned pairwise affinity."""
__version__ = "0.1.0"
