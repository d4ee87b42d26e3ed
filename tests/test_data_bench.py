"""`drx bench data`: throughput through the real TrainCrops + DataLoader."""

from __future__ import annotations

import argparse
import json

import pytest

from data_fixtures import make_csv
from drx.bench import data as bench
from drx.errors import DataError


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(list(argv))


def test_bench_data_prints_rates_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DRX_CACHE", str(tmp_path / "cache"))
    make_csv(tmp_path, n=6, size=(64, 48))
    out_json = tmp_path / "b.json"
    rc = bench.run(_args("csv", "--root", str(tmp_path), "--batch", "4", "--crops", "2", "--crop-size", "32", "--images", "6", "--json", str(out_json)))
    out = capsys.readouterr().out
    assert rc == 0
    for row in ("crops/s", "decoded images/s", "training images/s", "batches/s", "epoch"):
        assert row in out
    res = json.loads(out_json.read_text())
    assert res["crops"] >= 12 and res["crops"] % 4 == 0 and res["crops_per_s"] > 0
    assert res["training_images_per_s"] == pytest.approx(res["crops_per_s"] / 2)


def test_bench_data_rejects_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="--batch must be >= 1"):
        bench.run(_args("csv", "--root", str(tmp_path), "--batch", "0"))
    with pytest.raises(SystemExit):
        _args("csv", "--seconds", "1", "--images", "3")
