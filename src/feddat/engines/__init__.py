"""Engines run the rounds of a method: `embedded` (one process) here; Flower elsewhere."""
