"""Test data: the synthetic sets of data/synthetic.py."""

from data.synthetic import tiny_splits, write_idx_dataset

__all__ = ["tiny_splits", "write_idx_dataset"]
