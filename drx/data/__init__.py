"""The benchmark registry and adapters (benchmarks/), image decoding and resizing (images.py),
splits (splits.py), crops (transforms.py), loaders (loader.py) and the embedded benchmark
(embedded.py); see docs/data.md. Imports nothing: `import drx.data.benchmarks` stays torch-free."""
