"""The benchmark registry: one adapter class per benchmark, each in its own module, turns a
benchmark folder in its official layout into a manifest (see :mod:`drx.data.benchmarks.base`).

Everything that needs the list of benchmarks derives it from here: config validation
(``data.benchmark``), table labels (:func:`benchmark_label`), the real benchmarks of a search grid
(:data:`REAL_BENCHMARKS`). Also here: :func:`load_manifest`, :func:`check_benchmark` (decode every
image, list every fault by name) and :func:`prepare_benchmark` (a resized copy in the same
official layout, resumable).

Torch-free: drx.config (and through it the report) imports this package.
"""

from __future__ import annotations

from drx.data.benchmarks.base import (
    ADAPTERS,
    EXCLUDED_FILE,
    IMAGE_EXTENSIONS,
    PREPARED_FILE,
    Adapter,
    Labels,
    get_adapter,
    register_benchmark,
)

# Each import registers its adapter; their order is the registry order (BENCHMARKS, help texts).
from drx.data.benchmarks.koniq import KonIQ
from drx.data.benchmarks.livec import LIVEC
from drx.data.benchmarks.spaq import SPAQ
from drx.data.benchmarks.livefb import LIVEFB
from drx.data.benchmarks.bid import BID
from drx.data.benchmarks.csv import CSVBenchmark
from drx.data.benchmarks.embedded import Embedded

from drx.data.benchmarks.check import CheckReport, check_benchmark
from drx.data.benchmarks.manifest import load_manifest
from drx.data.benchmarks.prepare import JPEG_QUALITY, PrepareReport, prepare_benchmark
from drx.io import TMP_SUFFIX

#: Every benchmark name, in registry order.
BENCHMARKS: tuple[str, ...] = tuple(ADAPTERS)
#: The published benchmarks scored by human raters (not csv, not embedded).
REAL_BENCHMARKS: tuple[str, ...] = tuple(name for name, adapter in ADAPTERS.items() if adapter.real)

__all__ = [
    "ADAPTERS",
    "BENCHMARKS",
    "BID",
    "EXCLUDED_FILE",
    "IMAGE_EXTENSIONS",
    "JPEG_QUALITY",
    "LIVEC",
    "LIVEFB",
    "PREPARED_FILE",
    "REAL_BENCHMARKS",
    "SPAQ",
    "TMP_SUFFIX",
    "Adapter",
    "CSVBenchmark",
    "CheckReport",
    "Embedded",
    "KonIQ",
    "Labels",
    "PrepareReport",
    "authors_resize",
    "benchmark_label",
    "check_benchmark",
    "get_adapter",
    "load_manifest",
    "prepare_benchmark",
    "register_benchmark",
]


def authors_resize(benchmark: str) -> tuple[int, int] | None:
    """(height, width) in px of the authors' fixed resize for a benchmark (None: no resize).
    DataError for an unknown benchmark."""
    return get_adapter(benchmark).authors_resize


def benchmark_label(name: str) -> str:
    """Display name of a benchmark key: ``"koniq"`` → ``"KonIQ"``; a cross-dataset key
    ``"livefb->koniq"`` or ``"livefb→koniq"`` → ``"LIVE-FB→KonIQ"``. Unknown parts are kept as
    written (stripped)."""
    parts = str(name).replace("->", "→").split("→")
    labels = []
    for part in parts:
        adapter = ADAPTERS.get(part.strip().lower())
        labels.append(adapter.label if adapter is not None else part.strip())
    return "→".join(labels)
