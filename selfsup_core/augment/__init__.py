"""Batch-wise augmentations that record what they drew, contributed by plugins."""
