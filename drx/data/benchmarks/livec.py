"""LIVE In the Wild Image Quality Challenge (Ghadiyaram and Bovik 2016): 1,162 photos from
mobile devices (after dropping the raters' 7 training images), MOS on 0-100.

Layout: ``<root>/Data/AllImages_release.mat``, ``<root>/Data/AllMOS_release.mat`` (optionally
``AllStdDev_release.mat``) and the images in ``<root>/Images/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from drx.data.benchmarks.base import Adapter, Labels, listing, need_file, register_benchmark, suggest
from drx.errors import DataError


@register_benchmark
class LIVEC(Adapter):
    name = "livec"
    label = "LIVEC"
    real = True
    nominal_range = (0.0, 100.0)
    authors_resize = None
    default_resize = None
    expected_count = 1162
    defaults = {}
    N_TRAINING = 7  # the first 7 entries are the subjects' training images (names t*.bmp)
    NAMES, MOS, STD = "AllImages_release", "AllMOS_release", "AllStdDev_release"
    layout = "<root>/Data/AllImages_release.mat, <root>/Data/AllMOS_release.mat and images in <root>/Images/"

    def label_files(self, root, options):
        files = [root / "Data" / f"{self.NAMES}.mat", root / "Data" / f"{self.MOS}.mat"]
        std = root / "Data" / f"{self.STD}.mat"
        return files + ([std] if std.is_file() else [])

    def scan_dirs(self, root, options):
        return [(root / "Images", False, frozenset())]  # not recursive: skips trainingImages/

    @staticmethod
    def _load_var(path: Path, var: str) -> np.ndarray:
        # Imported on use: the registry is imported by drx.config (and so by every command).
        from scipy.io import loadmat

        need_file(path, "LIVE Challenge label file")
        try:
            data = loadmat(str(path))
        except NotImplementedError:
            raise DataError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not readable by scipy; re-save it with save(..., '-v7')") from None
        except Exception as exc:  # scipy raises ValueError/TypeError/... on damaged files
            raise DataError(f"{path}: cannot be read as a MATLAB .mat file ({type(exc).__name__}: {exc})") from None
        if var not in data:
            found = [k for k in data if not k.startswith("__")]
            raise DataError(f"{path}: variable {var!r} not found{suggest(var, found)} (variables: {', '.join(found) or 'none'})")
        return np.asarray(data[var])

    @staticmethod
    def _names(arr: np.ndarray, path: Path) -> list[str]:
        out = []
        for k, item in enumerate(arr.ravel()):
            value = item
            while isinstance(value, np.ndarray):  # MATLAB cells nest: cell -> char array
                if value.size != 1:
                    break
                value = value.ravel()[0]
            if isinstance(value, np.ndarray) and value.dtype.kind == "U":
                value = "".join(value.ravel().tolist())
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}: entry {k + 1} of the image names is not a file name ({value!r})")
            out.append(value.strip())
        return out

    def parse(self, root, options):
        names_path = root / "Data" / f"{self.NAMES}.mat"
        mos_path = root / "Data" / f"{self.MOS}.mat"
        names = self._names(self._load_var(names_path, self.NAMES), names_path)
        mos_raw = self._load_var(mos_path, self.MOS)
        try:
            mos = mos_raw.astype(float).ravel()
        except (TypeError, ValueError):
            raise DataError(f"{mos_path}: variable {self.MOS!r} must hold numbers") from None
        if len(mos) != len(names):
            raise DataError(f"{mos_path} holds {len(mos)} MOS values but {names_path} names {len(names)} images; the files must match entry by entry")
        frame = pd.DataFrame(
            {
                "image_id": names,
                "path": [str(root / "Images" / n) for n in names],
                "mos": mos,
                "_row": [f"entry {k + 1}" for k in range(len(names))],
            }
        )
        std_path = root / "Data" / f"{self.STD}.mat"
        if std_path.is_file():
            std_raw = self._load_var(std_path, self.STD)
            try:
                std = std_raw.astype(float).ravel()
            except (TypeError, ValueError):
                raise DataError(f"{std_path}: variable {self.STD!r} must hold numbers") from None
            if len(std) != len(names):
                raise DataError(f"{std_path} holds {len(std)} values but {names_path} names {len(names)} images")
            frame["std"] = std
        warnings = []
        head = frame.iloc[: self.N_TRAINING]
        odd = [f"{w} ({n!r})" for w, n in zip(head["_row"], head["image_id"]) if not Path(n).name.lower().startswith("t")]
        if odd:
            warnings.append(
                f"{names_path}: the first {self.N_TRAINING} entries are dropped as the subjects' training images (names t*), "
                f"but {listing(odd)} do not look like training images; is this the official file?"
            )
        # Standard practice (LIVE's README, HyperIQA, DR.Experts, pyiqa): drop the 7 training images.
        frame = frame.iloc[self.N_TRAINING :].reset_index(drop=True)
        return Labels(frame, names_path, warnings)
