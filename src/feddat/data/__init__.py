"""Data: synthetic generator, benchmarks, client datasets."""
