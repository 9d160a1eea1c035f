"""Batch jobs over the atlas: embed, index, evaluate."""
