"""Benchmarks (benchmarks.py), splits (splits.py), crops (transforms.py), loaders (loader.py) and
the embedded benchmark (embedded.py); see docs/data.md."""
