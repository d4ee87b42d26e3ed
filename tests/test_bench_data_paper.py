"""`drx bench data` at paper shapes: real-sized KonIQ/SPAQ trees read by the real adapters, per-worker
crops/s through the real loader at 384-px crops, the workers needed to feed a rate, the decoding
paths side by side, and clear errors for bad input."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil

import pandas as pd
import pytest

from drx.bench import data as bench
from drx.data.benchmarks import load_manifest
from drx.data.images import image_size
from drx.errors import DataError
from drx.testing.trees import TREE_SIZES, write_benchmark_tree

# torchvision 0.29 deprecates its image decoders; the bench times decode_jpeg knowingly (one of the
# paths compared, none the loader uses).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.fixture(scope="module")
def koniq_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("koniq")
    return root, write_benchmark_tree("koniq", root, 3)


@pytest.fixture(scope="module")
def spaq_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("spaq")
    return root, write_benchmark_tree("spaq", root, 2)


@pytest.mark.parametrize("name", ["koniq", "spaq"])
def test_tree_has_the_real_sizes_and_label_format_and_the_adapter_reads_it(name, koniq_tree, spaq_tree):
    root, paths = koniq_tree if name == "koniq" else spaq_tree
    for p in paths:
        assert image_size(p) == TREE_SIZES[name] == ((1024, 768) if name == "koniq" else (4000, 3000))
        assert p.read_bytes()[:2] == b"\xff\xd8"  # JPEG
        # Photographic detail: about 1-5 bits/px at quality 90, as released photos (a smooth
        # synthetic image compresses to a small fraction of a bit per pixel).
        assert 0.8 < 8 * p.stat().st_size / (TREE_SIZES[name][0] * TREE_SIZES[name][1]) < 6
    if name == "koniq":
        labels = pd.read_csv(root / "koniq10k_scores_and_distributions.csv")
        assert list(labels.columns) == ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]
        assert [p.parent.name for p in paths] == ["1024x768"] * len(paths)
        score = labels["MOS_zscore"]
    else:
        labels = pd.read_excel(root / "Annotations" / "MOS and Image attribute scores.xlsx")
        assert list(labels.columns)[:2] == ["Image name", "MOS"]
        assert [p.parent.name for p in paths] == ["TestImage"] * len(paths)
        score = labels["MOS"]
    manifest = load_manifest(name, str(root))  # the real adapter
    assert manifest["path"].tolist() == [str(p) for p in paths]
    assert manifest["mos"].tolist() == pytest.approx(score.tolist())
    # A rerun keeps the images already written.
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert write_benchmark_tree(name, root, len(paths)) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps


def test_bench_reports_crops_per_worker_and_workers_needed(tmp_path, koniq_tree, capsys):
    root, paths = koniq_tree
    out_json = tmp_path / "b.json"
    rc = bench.run(_args("koniq", "--synthetic-tree", str(root), "--tree-images", str(len(paths)), "--crop-size", "384",
                         "--resize", "384", "--workers", "0,1", "--batch", "3", "--images", "6", "--feed", "561",
                         "--json", str(out_json)))
    assert rc == 0
    out = capsys.readouterr().out
    res = json.loads(out_json.read_text())
    assert res["image_size"] == [1024, 768] and res["crop_size"] == 384 and res["n_images"] == len(paths)
    assert [r["workers"] for r in res["runs"]] == [0, 1]
    for r in res["runs"]:
        assert r["crops"] >= 6 and r["crops_per_s"] > 0
        assert r["crops_per_s_per_worker"] == pytest.approx(r["crops_per_s"] / max(r["workers"], 1))
        # Crops made (prefetched ones too) over the loading processes' CPU time.
        assert r["crops_made"] >= r["crops"] + 3 and r["cpu_seconds"] > 0
        assert r["crops_per_cpu_s"] == pytest.approx(r["crops_made"] / r["cpu_seconds"])
    # On 2 or more cores the 1-worker run stands for a worker (it and the main process fit).
    chosen = next(r for r in res["runs"] if r["workers"] == res["per_worker_from_workers"])
    assert chosen["workers"] == (1 if res["cores"] >= 2 else 0)
    assert res["per_worker_crops_per_s"] == chosen["crops_per_cpu_s"]
    assert res["workers_needed"] == math.ceil(561 / res["per_worker_crops_per_s"])
    assert res["workers_needed_wall_clock"] == math.ceil(561 / chosen["crops_per_s_per_worker"])
    # The printed figures are the JSON's.
    printed = re.search(r"workers needed\s+(\d+) = ceil\(561 / ([\d.]+)\)", out)
    assert printed and int(printed.group(1)) == res["workers_needed"]
    assert float(printed.group(2)) == pytest.approx(res["per_worker_crops_per_s"], abs=0.05)


def test_bench_compares_decoding_paths_on_full_size_spaq(tmp_path, spaq_tree, capsys):
    root, paths = spaq_tree
    out_json = tmp_path / "d.json"
    rc = bench.run(_args("spaq", "--root", str(root), "--resize", "384", "--batch", "2", "--seconds", "1",
                         "--compare-decoders", "--prepared", str(tmp_path / "prep"), "--feed", "561", "--json", str(out_json)))
    assert rc == 0
    assert "decoding paths" in capsys.readouterr().out
    dec = json.loads(out_json.read_text())["decoders"]
    assert list(dec) == list(bench.DECODERS)
    for name, d in dec.items():
        assert d["crops_per_s"] > 0 and d["workers_needed"] == math.ceil(561 / d["crops_per_s"]), name
        # Each path changes the pixels by at most a few 8-bit levels (re-encoding, DCT scaling).
        assert 0 <= d["mean_abs_diff"] < 3, name
    assert dec["pil"]["ratio"] == 1 and dec["cache"]["mean_abs_diff"] == 0
    # The prepared copy was written at training size by `drx data prepare`'s code, in the layout.
    prepared = sorted((tmp_path / "prep" / "spaq" / "TestImage").iterdir())
    assert [p.name for p in prepared] == [p.name for p in paths]
    assert {image_size(p) for p in prepared} == {(512, 384)}


def test_bad_input_names_the_option_or_the_file(tmp_path, koniq_tree):
    root, paths = koniq_tree
    r = str(root)
    with pytest.raises(DataError, match="--feed must be > 0"):
        bench.run(_args("koniq", "--root", r, "--feed", "0"))
    with pytest.raises(DataError, match="--workers must be >= 0, got -1"):
        bench.run(_args("koniq", "--root", r, "--workers", "-1"))
    with pytest.raises(DataError, match="--workers: expected worker counts"):
        bench.run(_args("koniq", "--root", r, "--workers", "0,two"))
    with pytest.raises(DataError, match="--tree-images must be >= 1"):
        bench.run(_args("koniq", "--synthetic-tree", str(tmp_path / "t"), "--tree-images", "0"))
    with pytest.raises(DataError, match="--synthetic-tree writes koniq, spaq trees, not 'livec'"):
        bench.run(_args("livec", "--synthetic-tree", str(tmp_path / "t")))
    with pytest.raises(DataError, match="--prepared is used only with --compare-decoders"):
        bench.run(_args("koniq", "--root", r, "--prepared", str(tmp_path / "p")))
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    gone = broken / "1024x768" / paths[1].name
    gone.unlink()
    with pytest.raises(DataError, match=re.escape(str(gone))):
        bench.run(_args("koniq", "--root", str(broken), "--resize", "384", "--images", "1"))


def test_workers_needed_refuses_a_rate_that_was_not_measured():
    """ceil(feed / rate); a rate of 0, or NaN (a run that read no CPU time), is an error, never 0 workers."""
    assert bench.workers_needed(561, 38.6) == 15 and bench.workers_needed(775.5, 38.566) == 21
    for rate in (0.0, float("nan"), float("inf")):
        with pytest.raises(DataError, match="measured rate per worker"):
            bench.workers_needed(561, rate)
