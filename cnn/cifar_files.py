"""CIFAR-10's official files: read, verified and fetched safely.

The official layouts: `cifar-10-batches-py/` (pickled batches), `cifar-10-python.tar.gz` (the
official archive) and `cifar-10-batches-bin/` (the binary version). Pickles are read by a restricted
unpickler that admits only numpy arrays, so a tampered file cannot run code; downloads go through
torchvision's own code and are checked against the official MD5.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# torchvision's CIFAR10 names and digests (tests/test_data.py holds these to its class attributes), written out
# because importing torchvision takes 2 s here and `bench run` prepares its data while the fork server imports it
PY_FOLDER = "cifar-10-batches-py"  # CIFAR10.base_folder
ARCHIVE = "cifar-10-python.tar.gz"  # CIFAR10.filename
BIN_FOLDER = "cifar-10-batches-bin"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # CIFAR10.url
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"  # CIFAR10.tgz_md5
TRAIN_LIST = [["data_batch_1", "c99cafc152244af753f735de768cd75f"], ["data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"],
              ["data_batch_3", "54ebc095f3ab1f0389bbae665268c751"], ["data_batch_4", "634d18415352ddfa80567beed471001a"],
              ["data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"]]  # CIFAR10.train_list
TEST_LIST = [["test_batch", "40351d587109b95175f43aff81a1287e"]]  # CIFAR10.test_list
META = {"filename": "batches.meta", "key": "label_names", "md5": "5ff9c542aee3614f3951f8cda6e48888"}  # CIFAR10.meta
TRAIN_FILES = [name for name, _ in TRAIN_LIST]
TEST_FILES = [name for name, _ in TEST_LIST]
OFFICIAL_MD5 = {name: md5 for name, md5 in TRAIN_LIST + TEST_LIST}
OFFICIAL_MD5[META["filename"]] = META["md5"]
BIN_TRAIN_FILES = [f"{name}.bin" for name in TRAIN_FILES]
BIN_TEST_FILES = [f"{name}.bin" for name in TEST_FILES]
BIN_RECORD = 1 + 3072
# The binary release publishes no per-file MD5s; its files have a fixed size.
BIN_OFFICIAL_SIZE = 10000 * BIN_RECORD
BATCH_IMAGES = 10000  # what one CIFAR-10 batch holds; a file declaring more is refused before it is read
MAX_PICKLE_BYTES = 64 * 2**20  # an official python batch is 31 MB
NO_VERIFY_HINT = "pass --no-verify to accept a custom folder in the CIFAR-10 format"


class DataError(Exception):
    """A data file or folder is missing, corrupt, tampered with or not official."""


@dataclass(frozen=True)
class CifarArrays:
    """Decoded images (N, 32, 32, 3) uint8 as torchvision's CIFAR10.data, labels int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    name: str  # "cifar10", "cifar10-unverified" or "synthetic"


# --------------------------------------------------------------------------- parsing


class _BatchUnpickler(pickle._Unpickler):
    """Admits only what CIFAR batches hold: numpy arrays and dtypes (numpy 1 or 2 names).

    Built on the pure-Python unpickler, whose memo is a dict: the C one sizes its memo table by the
    largest index a file names, so a few bytes naming index 2**28 allocate gigabytes (a memo bomb).
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load '{module}.{name}' (only numpy arrays are allowed)")
        if name == "_reconstruct":
            return _bounded_reconstruct
        return getattr(np, name)


def _bounded_reconstruct(subtype, shape, dtype):
    """numpy's `_reconstruct` (under numpy 1 and 2 alike), refusing an array larger than a CIFAR-10 batch
    before it is allocated: a pickle of a few bytes can declare any shape."""
    size = int(np.prod(shape, dtype=object)) if isinstance(shape, tuple) else -1
    if not 0 <= size <= BATCH_IMAGES * 3072:
        raise pickle.UnpicklingError(f"an array of shape {shape!r:.60} is larger than a CIFAR-10 batch")
    return np.ndarray.__reduce__(np.empty(0))[0](subtype, shape, dtype)


def _unpickle(path: Path) -> dict:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if size > MAX_PICKLE_BYTES:
        raise DataError(f"{path}: {size} bytes, larger than any CIFAR-10 batch ({MAX_PICKLE_BYTES} at most)")
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # any unpickling failure means a corrupt, truncated or tampered file
        raise DataError(f"{path}: not a valid CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a valid CIFAR-10 batch (expected a dict, found {type(obj).__name__})")
    return obj


def _checked_batch(path: Path, data, labels) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {dtype} {shape}")
    if len(data) > BATCH_IMAGES:
        raise DataError(f"{path}: declares {len(data)} images; a CIFAR-10 batch holds at most {BATCH_IMAGES}")
    if data.strides[1] != 1 or data.strides[0] < 3072:  # e.g. zero strides: a few bytes posing as a large array
        raise DataError(f"{path}: 'data' is not an array of its own bytes (strides {data.strides}, expected (3072, 1))")
    integers = (labels.dtype.kind in "iu") if isinstance(labels, np.ndarray) else \
        (isinstance(labels, list) and all(type(v) is int for v in labels))
    if not integers:
        raise DataError(f"{path}: 'labels' must be a list of integers 0..9")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: 'labels' must be a list of integers 0..9") from None
    if y.ndim != 1 or len(y) != len(data):
        raise DataError(f"{path}: {len(data)} images but {y.size} labels")
    if len(y) == 0:
        raise DataError(f"{path}: holds no images")
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"{path}: labels must be 0..9, found {y.min()}..{y.max()}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def _read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 batch (needs 'data' and 'labels', found {sorted(batch)})")
    return _checked_batch(path, batch["data"], batch["labels"])


def _checked_classes(path: Path, names) -> tuple[str, ...]:
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{path}: expected 10 class names, found {names!r:.80}")
    return tuple(names)


def _require_files(folder: Path, names: list[str]) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder / missing[0]}: missing (the folder needs {', '.join(names)})")


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_python_folder(folder: Path, name: str = "cifar10") -> CifarArrays:
    """Parses the official "python version" folder (`cifar-10-batches-py/`)."""
    meta = META["filename"]
    _require_files(folder, TRAIN_FILES + TEST_FILES + [meta])
    classes = _checked_classes(folder / meta, _unpickle(folder / meta).get("label_names"))
    train = _concat([_read_py_batch(folder / n) for n in TRAIN_FILES])
    test = _concat([_read_py_batch(folder / n) for n in TEST_FILES])
    return CifarArrays(*train, *test, classes, name)


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    size = path.stat().st_size  # checked before reading: a sparse file can declare gigabytes
    if size == 0 or size % BIN_RECORD:
        raise DataError(f"{path}: {size} bytes is not a whole number of {BIN_RECORD}-byte records (truncated?)")
    if size > BATCH_IMAGES * BIN_RECORD:
        raise DataError(f"{path}: {size} bytes; a CIFAR-10 batch holds at most {BATCH_IMAGES * BIN_RECORD}")
    raw = np.fromfile(path, dtype=np.uint8)
    records = raw.reshape(-1, BIN_RECORD)
    return _checked_batch(path, records[:, 1:], records[:, 0])


def read_binary_folder(folder: Path, name: str = "cifar10") -> CifarArrays:
    """Parses the official "binary version" folder (`cifar-10-batches-bin/`)."""
    meta = folder / "batches.meta.txt"
    _require_files(folder, BIN_TRAIN_FILES + BIN_TEST_FILES + ["batches.meta.txt"])
    names = [line.strip() for line in meta.read_text(encoding="ascii", errors="replace").splitlines() if line.strip()]
    classes = _checked_classes(meta, names)
    train = _concat([_read_bin_batch(folder / n) for n in BIN_TRAIN_FILES])
    test = _concat([_read_bin_batch(folder / n) for n in BIN_TEST_FILES])
    return CifarArrays(*train, *test, classes, name)


# --------------------------------------------------------------------------- verification


def verify_python_folder(folder: Path) -> None:
    """Checks every file against the official MD5s (the ones torchvision checks)."""
    for fname, md5 in OFFICIAL_MD5.items():
        path = folder / fname
        if not path.is_file():
            raise DataError(f"{path}: missing (the official folder has {', '.join(OFFICIAL_MD5)})")
        actual = file_md5(path)
        if actual != md5:
            raise DataError(f"{path}: MD5 {actual} is not the official {md5}; {NO_VERIFY_HINT}")


def file_md5(path: Path) -> str:
    from torchvision.datasets.utils import calculate_md5

    return calculate_md5(str(path))


def verify_binary_folder(folder: Path) -> None:
    """Checks each batch has the official size (the binary release publishes no MD5s)."""
    for fname in BIN_TRAIN_FILES + BIN_TEST_FILES:
        path = folder / fname
        size = path.stat().st_size if path.is_file() else None
        if size != BIN_OFFICIAL_SIZE:
            found = "missing" if size is None else f"{size} bytes"
            raise DataError(f"{path}: {found}, the official batch has {BIN_OFFICIAL_SIZE} bytes; {NO_VERIFY_HINT}")


def write_python_folder(arrays: CifarArrays, folder: Path) -> Path:
    """Writes `arrays` in the "python version" layout into `folder` (data_batch_1..5, test_batch, batches.meta:
    the files torchvision's CIFAR10 reads, of the official files' sizes when the arrays are CIFAR-10's 50,000 +
    10,000 images). Pickled at protocol 4: it loads as the official protocol-2 files do (a 10,000-image batch
    unpickles in about 3 ms either way)."""
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, images: np.ndarray, labels: np.ndarray, label: str) -> None:
        rows = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2).reshape(len(images), 3072))
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": label, "labels": [int(v) for v in labels], "data": rows,
                         "filenames": [f"{name}_{i:05d}.png" for i in range(len(labels))]}, f, protocol=4)

    n, k = len(arrays.train_y), len(TRAIN_FILES)
    edges = [n * i // k for i in range(k + 1)]
    for i, name in enumerate(TRAIN_FILES):
        part = slice(edges[i], edges[i + 1])
        dump(name, arrays.train_x[part], arrays.train_y[part], f"training batch {i + 1} of {k}")
    dump(TEST_FILES[0], arrays.test_x, arrays.test_y, "testing batch 1 of 1")
    with open(folder / META["filename"], "wb") as f:
        pickle.dump({META["key"]: list(arrays.classes), "num_cases_per_batch": edges[1], "num_vis": 3072}, f,
                    protocol=4)
    return folder
