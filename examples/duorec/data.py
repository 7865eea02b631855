"""Data for the DuoRec example: loaders, 5-core filtering, leave-one-out split, padded batches, synthetic data.

Pipeline (the DuoRec / AdaptiveRec protocol):

1. read (user, item, time) records from one of the official file formats (`load_records`);
2. order every user's interactions by time, ties kept in file order (`group_by_user`);
3. iterative 5-core filtering of users and items (`k_core`);
4. re-index items to 1..n (0 is padding) into a `SequenceData`;
5. leave-one-out: the last item of each user is the test target, the second last the validation
   target, and every prefix of the rest predicts its next item (`train_samples`, `eval_samples`),
   inputs truncated to the last `max_len` = 50 items.

A sample is stored as two integers: the position `end` of its target in the flat item array and the
input `length`; its input is `items[end - length : end]`. Batches are built from these on the fly.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import math
import os
import re
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("synthetic", "ml-1m", "beauty")
MAX_LEN = 50
CORE = 5

Record = tuple[str, str, float]

# File names each dataset may come as, in order of preference. Beauty's first three are the
# 5-core review data that the papers' statistics (22,363 / 12,101 / 198,502) come from.
KNOWN_FILES: dict[str, tuple[str, ...]] = {
    "ml-1m": ("ratings.dat", "ml-1m/ratings.dat", "ml-1m.zip", "ml-1m.inter", "ml-1m/ml-1m.inter"),
    "beauty": (
        "Beauty.txt",
        "reviews_Beauty_5.json.gz",
        "reviews_Beauty_5.json",
        "Amazon_Beauty.inter",
        "Amazon_Beauty/Amazon_Beauty.inter",
        "ratings_Beauty.csv",
    ),
}


@dataclass(frozen=True)
class Download:
    """An official file and the sha256 it must have (None: no trustworthy published value, so
    `download` refuses it rather than trust whatever the server sends)."""

    url: str
    filename: str
    sha256: str | None
    size: int | None = None  # bytes, where published beside the sha256


DOWNLOADS: dict[str, Download] = {
    # GroupLens publishes no checksum. This sha256 and size are the ones TensorFlow Datasets pins for
    # the same URL (tensorflow/datasets, tensorflow_datasets/url_checksums/movielens.txt).
    "ml-1m": Download(
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        size=5_917_549,
    ),
    # McAuley's 2014 5-core Beauty reviews: no sha256 of this file is published anywhere we could
    # find (the site gives none, and no loader pins one), so --download refuses it.
    "beauty": Download(
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Beauty_5.json.gz",
        "reviews_Beauty_5.json.gz",
        sha256=None,
    ),
}


# --------------------------------------------------------------------------------------------- loaders


class DataFileError(ValueError):
    """A data file that cannot be read; the message names the file and the fix."""


# Errors of a damaged or mislabelled compressed file, raised while it is read.
CORRUPT_ARCHIVE = (gzip.BadGzipFile, zipfile.BadZipFile, EOFError, zlib.error)


def _open_text(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:  # type: ignore[operator]
            yield from f
    except CORRUPT_ARCHIVE as error:
        raise DataFileError(
            f"{path} is not a readable gzip file ({error}): download it again, or decompress it and pass the "
            "uncompressed file"
        ) from error


def _shorten(line: str, width: int = 60) -> str:
    return repr(line if len(line) <= width else line[:width] + "...")


def _timestamp(value: object, number: int) -> float:
    """A record's time as a finite float; a line that has none is an error, never a silent guess."""
    try:
        time = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"line {number}: timestamp {_shorten(str(value))} is not a number") from None
    if not math.isfinite(time):
        raise ValueError(f"line {number}: timestamp {value!r} is not finite")
    return time


def read_movielens_dat(lines: Iterable[str]) -> Iterator[Record]:
    """MovieLens `ratings.dat`: ``UserID::MovieID::Rating::Timestamp`` per line."""
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        fields = line.split("::")
        if len(fields) < 4:
            raise ValueError(f"line {number}: expected UserID::MovieID::Rating::Timestamp, got {_shorten(line)}")
        yield fields[0], fields[1], _timestamp(fields[3], number)


def read_movielens_zip(path: Path) -> Iterator[Record]:
    """The official `ml-1m.zip`: reads `ml-1m/ratings.dat` inside it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("ratings.dat")]
            if not names:
                raise DataFileError(f"{path} holds no ratings.dat: is it the official ml-1m.zip?")
            with archive.open(names[0]) as raw:
                try:
                    yield from read_movielens_dat(line.decode("latin-1") for line in raw)
                except DataFileError:
                    raise
                except ValueError as error:
                    raise ValueError(f"({names[0]}) {error}") from error
    except CORRUPT_ARCHIVE as error:
        raise DataFileError(f"{path} is not a readable zip archive ({error}): download it again") from error


def read_recbole_inter(lines: Iterable[str]) -> Iterator[Record]:
    """RecBole atomic `.inter` file: a tab-separated header of ``name:type`` fields, then rows.

    Uses the ``user_id``, ``item_id`` and (if present) ``timestamp`` columns; without a timestamp the
    file order is the time order.
    """
    it = iter(lines)
    header = next(it, "").rstrip("\n").split("\t")
    names = [field.split(":")[0] for field in header]
    try:
        user_col, item_col = names.index("user_id"), names.index("item_id")
    except ValueError:
        raise ValueError(f"line 1: a RecBole .inter header needs user_id and item_id fields, got {header}") from None
    time_col = names.index("timestamp") if "timestamp" in names else None
    for number, line in enumerate(it, 2):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < len(names):
            raise ValueError(f"line {number}: expected {len(names)} tab-separated fields, got {_shorten(line)}")
        time = _timestamp(fields[time_col], number) if time_col is not None else float(number)
        yield fields[user_col], fields[item_col], time


def read_amazon_ratings_csv(lines: Iterable[str]) -> Iterator[Record]:
    """Amazon 2014 ratings-only CSV (`ratings_Beauty.csv`): ``user,item,rating,timestamp``; a header
    line is skipped, and only as the first line."""
    for number, row in enumerate(csv.reader(lines), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 4:
            raise ValueError(f"line {number}: expected user,item,rating,timestamp, got {_shorten(','.join(row))}")
        if number == 1 and not _is_number(row[3]):
            continue  # a header
        yield row[0], row[1], _timestamp(row[3], number)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_amazon_reviews_json(lines: Iterable[str]) -> Iterator[Record]:
    """Amazon 2014 review file (`reviews_Beauty_5.json[.gz]`): one review object per line.

    Accepts strict JSON and the older Python-literal lines (read with `ast.literal_eval`, which
    evaluates literals only); uses ``reviewerID``, ``asin`` and ``unixReviewTime``.
    """
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            review = json.loads(line)
        except json.JSONDecodeError:
            try:
                review = ast.literal_eval(line)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                shown = _shorten(line)
                raise ValueError(f"line {number}: not a review object (JSON or Python literal): {shown}") from None
        if not isinstance(review, dict):
            raise ValueError(f"line {number}: expected one review object, got {type(review).__name__}")
        missing = [key for key in REVIEW_KEYS if key not in review]
        if missing:
            raise ValueError(f"line {number}: the review has no {', '.join(missing)}")
        yield str(review["reviewerID"]), str(review["asin"]), _timestamp(review["unixReviewTime"], number)


REVIEW_KEYS = ("reviewerID", "asin", "unixReviewTime")


def read_user_sequences_txt(lines: Iterable[str]) -> Iterator[Record]:
    """One user per line, ``user_id item_1 item_2 ...`` in time order (the S3-Rec / ICLRec format).

    The position in the line is the timestamp.
    """
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        user = fields[0]
        for position, item in enumerate(fields[1:]):
            yield user, item, float(position)


def file_format(path: Path) -> str:
    """The format of `path`, from its name: ``dat``, ``zip``, ``inter``, ``csv``, ``json`` or ``txt``."""
    name = path.name.lower()
    for suffix, kind in (
        (".dat", "dat"),
        (".zip", "zip"),
        (".inter", "inter"),
        (".csv", "csv"),
        (".json", "json"),
        (".json.gz", "json"),
        (".txt", "txt"),
    ):
        if name.endswith(suffix):
            return kind
    raise ValueError(
        f"cannot tell the format of {path.name!r}: expected ratings.dat, ml-1m.zip, *.inter, ratings_*.csv, "
        "reviews_*.json[.gz] or a one-line-per-user *.txt"
    )


def load_records(path: str | Path) -> Iterator[Record]:
    """(user, item, time) records of an interaction file, in file order; the format follows the name.

    Raises (while the records are read):
        ValueError: a malformed line or a damaged archive, naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    kind = file_format(path)
    if kind == "zip":
        return _located(path, read_movielens_zip(path))
    readers = {
        "dat": read_movielens_dat,
        "inter": read_recbole_inter,
        "csv": read_amazon_ratings_csv,
        "json": read_amazon_reviews_json,
        "txt": read_user_sequences_txt,
    }
    return _located(path, readers[kind](_open_text(path)))


def _located(path: Path, records: Iterator[Record]) -> Iterator[Record]:
    """The records, with the file's name put in front of a reader's error (which names the line) and the fix
    after it."""
    try:
        yield from records
    except DataFileError:
        raise
    except ValueError as error:
        raise DataFileError(f"{path} {error}: fix or remove the line, or use the official file") from error


# ----------------------------------------------------------------------------------- preprocessing


def group_by_user(records: Iterable[Record]) -> dict[str, list[str]]:
    """Each user's items in time order; equal times keep their file order (a stable sort).

    Users appear in the order of their first record.
    """
    timed: dict[str, list[tuple[float, str]]] = {}
    for user, item, time in records:
        timed.setdefault(user, []).append((time, item))
    # sorted() is stable and the key is the time alone, so ties stay in file order.
    return {user: [item for _, item in sorted(events, key=lambda e: e[0])] for user, events in timed.items()}


def k_core(sequences: dict[str, list[str]], k: int = CORE) -> dict[str, list[str]]:
    """Iterative k-core: drop items with fewer than `k` interactions and users with fewer than `k`,
    repeatedly, until every remaining user and item has at least `k` (the unique k-core; repeated
    interactions count as interactions, as in RecBole)."""
    current = {user: list(items) for user, items in sequences.items()}
    while True:
        counts: dict[str, int] = {}
        for items in current.values():
            for item in items:
                counts[item] = counts.get(item, 0) + 1
        rare = {item for item, c in counts.items() if c < k}
        filtered = {}
        for user, items in current.items():
            kept = [item for item in items if item not in rare] if rare else items
            if len(kept) >= k:
                filtered[user] = kept
        if not rare and len(filtered) == len(current):
            return filtered
        current = filtered


@dataclass
class SequenceData:
    """Users' chronological item sequences, items re-indexed to 1..n_items (0 is padding).

    Attributes:
        name: dataset name.
        items: `(interactions,)` int64, every user's items concatenated in time order.
        offsets: `(users + 1,)` int64; user u's items are ``items[offsets[u]:offsets[u + 1]]``.
        n_items: number of distinct items.
        intents: `(users,)` latent intent of each user (synthetic data only), else None.
        item_tokens: the original id of item i at index i - 1, if known.
    """

    name: str
    items: np.ndarray
    offsets: np.ndarray
    n_items: int
    intents: np.ndarray | None = None
    item_tokens: list[str] | None = None

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def stats(self) -> dict[str, int]:
        """The statistics the papers report: users, items, interactions."""
        return {"users": self.n_users, "items": self.n_items, "interactions": int(len(self.items))}

    def item_counts(self) -> np.ndarray:
        """`(n_items + 1,)` number of interactions of each item (index 0, padding, is 0)."""
        return np.bincount(self.items, minlength=self.n_items + 1)

    @classmethod
    def from_sequences(
        cls, name: str, sequences: dict[str, list[str]], intents: dict[str, int] | None = None
    ) -> SequenceData:
        """Re-index items by first appearance (users in their given order)."""
        index: dict[str, int] = {}
        flat: list[int] = []
        offsets = [0]
        for items in sequences.values():
            for item in items:
                flat.append(index.setdefault(item, len(index) + 1))
            offsets.append(len(flat))
        user_intents = None
        if intents is not None:
            user_intents = np.array([intents[user] for user in sequences], dtype=np.int64)
        return cls(
            name=name,
            items=np.asarray(flat, dtype=np.int64),
            offsets=np.asarray(offsets, dtype=np.int64),
            n_items=len(index),
            intents=user_intents,
            item_tokens=list(index),
        )


def prepare(name: str, records: Iterable[Record], core: int = CORE) -> SequenceData:
    """Records → chronological sequences → iterative `core`-core → `SequenceData`."""
    return SequenceData.from_sequences(name, k_core(group_by_user(records), core))


# ----------------------------------------------------------------------------------- finding files


def default_data_dirs(dataset: str) -> list[Path]:
    """Where a dataset is looked for without ``--data-path``: the download cache, then ``../shared/data``
    beside the checkout (this example lives in ``<repo>/examples/duorec``)."""
    repo = Path(__file__).resolve().parents[2]
    return [cache_dir(dataset), repo.parent / "shared" / "data" / dataset]


def cache_dir(dataset: str) -> Path:
    """Download destination: ``$ADAPTIVE_CONTRASTIVE_DATA/<dataset>`` or ``~/.cache/adaptive_contrastive/<dataset>``."""
    root = os.environ.get("ADAPTIVE_CONTRASTIVE_DATA")
    return Path(root) / dataset if root else Path.home() / ".cache" / "adaptive_contrastive" / dataset


def find_data_file(dataset: str, data_path: str | Path | None) -> Path:
    """The file to load: `data_path` itself, a known file name inside it, or one in the default folders."""
    if data_path is not None:
        path = Path(data_path)
        if path.is_file():
            return path
        if not path.is_dir():
            raise FileNotFoundError(f"--data-path {path} does not exist")
        folders = [path]
    else:
        folders = default_data_dirs(dataset)
    for folder in folders:
        for name in KNOWN_FILES[dataset]:
            if (folder / name).is_file():
                return folder / name
    looked = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"no {dataset} file found in {looked} (looked for {', '.join(KNOWN_FILES[dataset])}); "
        f"pass --data-path PATH or --download"
    )


# ----------------------------------------------------------------------------------------- download


def _fetch(url: str, target: Path, timeout: float) -> None:
    """Write the body of `url` to `target`."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_download(path: Path, spec: Download, shown: Path | None = None) -> None:
    """Check a file against the sha256 (and size) pinned for it; `shown` is the name used in the message."""
    if spec.sha256 is None or not re.fullmatch(r"[0-9a-f]{64}", spec.sha256):
        raise ValueError(f"no sha256 is pinned for {spec.filename}: it cannot be checked")
    shown = shown or path
    if spec.size is not None and path.stat().st_size != spec.size:
        raise ValueError(
            f"{shown} is {path.stat().st_size} bytes, expected {spec.size} (sha256 {spec.sha256}): "
            "delete it and download again"
        )
    got = sha256_of(path)
    if got != spec.sha256:
        raise ValueError(f"{shown} has sha256 {got}, expected {spec.sha256}: delete it and download again")


def download(dataset: str, folder: str | Path | None = None, timeout: float = 30.0) -> Path:
    """Fetch the official file of `dataset` into `folder` (default `cache_dir`), verify its sha256, return
    its path. A file already there is verified too. The download lands in ``<file>.part`` and takes the
    file's name only once it matches, so a damaged or forged download is never found later.

    Raises:
        RuntimeError: the network is unreachable, with the URL and what to do instead.
        ValueError: no sha256 is pinned for the dataset's file (Beauty), or the file does not match it.
    """
    if dataset not in DOWNLOADS:
        raise ValueError(f"--download knows {sorted(DOWNLOADS)}, not {dataset!r}")
    spec = DOWNLOADS[dataset]
    target = Path(folder) if folder is not None else cache_dir(dataset)
    path = target / spec.filename
    if spec.sha256 is None:
        raise ValueError(
            f"--download {dataset}: no sha256 of {spec.filename} is published, so a download could not be "
            f"checked; fetch {spec.url} yourself, check it, and pass --data-path FILE (or copy it to {path})"
        )
    if path.is_file():
        verify_download(path, spec)
        return path
    partial = path.with_name(path.name + ".part")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RuntimeError(
            f"cannot create the download folder {target} ({error.strerror or error}): pass --data-path to another "
            "folder or set ADAPTIVE_CONTRASTIVE_DATA"
        ) from error
    try:
        _fetch(spec.url, partial, timeout)
        verify_download(partial, spec, shown=path)
        os.replace(partial, path)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise RuntimeError(
            f"could not download {dataset} from {spec.url} ({reason}). This machine may have no internet "
            f"access: fetch the file elsewhere, copy it to {path} (or anywhere) and pass --data-path"
        ) from error
    finally:
        partial.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------ synthetic data


def make_synthetic(
    n_users: int = 1000,
    n_intents: int = 16,
    items_per_intent: int = 40,
    min_len: int = 5,
    max_len: int = 15,
    successors: int = 4,
    noise: float = 0.05,
    seed: int = 2023,
    core: int = CORE,
    shared_items: int = 0,
    shared_rate: float = 0.0,
    markov: float = 1.0,
) -> SequenceData:
    """Sequences driven by latent user intents, so that in-batch false negatives really exist.

    Every intent owns a cluster of `items_per_intent` items and a sparse Markov chain over it: each
    item leads to one of `successors` items of its cluster (Dirichlet weights), to any item of the
    cluster with 15% chance, and to any item of the catalogue with probability `noise`. A user draws
    one intent and walks its chain from a Zipf-popular start item. Two users of the same intent are
    each other's false negatives; the labels stay in ``SequenceData.intents``.

    Knobs for the regime study (defaults leave the data as it always was): `core` is the k of the
    k-core filter (lower keeps cold items); `shared_items` > 0 adds a pool of items common to every
    intent, visited at each step with probability `shared_rate` (Zipf-popular within the pool), after
    which the walk resumes at the intent's last item: the item after a shared one then depends on the
    user's intent, which only the history before it reveals; `markov` < 1 makes a step follow the chain
    only with that probability and otherwise draw the next item from the intent's (Zipf) popularity, so
    that the next item depends on the intent more than on the last item.
    """
    rng = np.random.default_rng(seed)
    n_items = n_intents * items_per_intent
    shared_popularity = 1.0 / (np.arange(max(shared_items, 1)) + 1.0)
    shared_popularity /= shared_popularity.sum()
    cluster = np.arange(items_per_intent)
    popularity = 1.0 / (cluster + 1.0)
    popularity /= popularity.sum()
    chains = []
    for _ in range(n_intents):
        chain = np.full((items_per_intent, items_per_intent), 0.15 / items_per_intent)
        for row in chain:
            nexts = rng.choice(items_per_intent, size=successors, replace=False)
            row[nexts] += 0.85 * rng.dirichlet(np.ones(successors))
        chains.append(chain)
    sequences: dict[str, list[str]] = {}
    intents: dict[str, int] = {}
    for user in range(n_users):
        intent = int(rng.integers(n_intents))
        base = intent * items_per_intent
        length = int(rng.integers(min_len, max_len + 1))
        local = int(rng.choice(items_per_intent, p=popularity))
        walk = [base + local]
        for _ in range(length - 1):
            if rng.random() < noise:
                walk.append(int(rng.integers(n_items)))
                continue
            if shared_items and rng.random() < shared_rate:
                walk.append(n_items + int(rng.choice(shared_items, p=shared_popularity)))
                continue
            if markov < 1.0 and rng.random() >= markov:
                local = int(rng.choice(items_per_intent, p=popularity))
            else:
                local = int(rng.choice(items_per_intent, p=chains[intent][local]))
            walk.append(base + local)
        sequences[str(user)] = [str(item + 1) for item in walk]
        intents[str(user)] = intent
    filtered = k_core(sequences, core)
    return SequenceData.from_sequences("synthetic", filtered, {u: intents[u] for u in filtered})


# The command line's names of `make_synthetic`'s knobs (``--synthetic-<name>``), and their defaults.
SYNTHETIC_OPTIONS = {
    "users": ("n_users", 1000),
    "intents": ("n_intents", 16),
    "items_per_intent": ("items_per_intent", 40),
    "min_len": ("min_len", 5),
    "max_len": ("max_len", 15),
    "noise": ("noise", 0.05),
    "core": ("core", CORE),
    "shared_items": ("shared_items", 0),
    "shared_rate": ("shared_rate", 0.0),
    "markov": ("markov", 1.0),
}


def synthetic_options(config: dict) -> dict:
    """`make_synthetic` keyword arguments from a run's configuration (``synthetic_<name>`` keys; a
    configuration written before a knob existed gets the knob's default)."""
    return {kwarg: config.get(f"synthetic_{name}", default) for name, (kwarg, default) in SYNTHETIC_OPTIONS.items()}


def load_dataset(
    dataset: str, data_path: str | Path | None = None, fetch: bool = False, **synthetic: int
) -> SequenceData:
    """The filtered dataset `dataset` (``synthetic``, ``ml-1m`` or ``beauty``)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == "synthetic":
        return make_synthetic(**synthetic)
    if fetch:
        folder = Path(data_path) if data_path is not None and not Path(data_path).is_file() else None
        path = download(dataset, folder)
    else:
        path = find_data_file(dataset, data_path)
    data = prepare(dataset, load_records(path))
    if data.n_users == 0:
        raise ValueError(
            f"{path}: no user and item keep {CORE} interactions after {CORE}-core filtering; is it the right file?"
        )
    return data


# ------------------------------------------------------------------------------ split and batching


@dataclass
class Samples:
    """Next-item samples: the input of sample r is ``items[end[r] - length[r] : end[r]]``, its target ``items[end[r]]``.

    Attributes:
        end: `(R,)` int64 position of the target in the flat item array.
        length: `(R,)` int64 input length (1..max_len).
        user: `(R,)` int64 user index.
        target: `(R,)` int64 target item.
    """

    end: np.ndarray
    length: np.ndarray
    user: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.end)

    def subset(self, rows: np.ndarray) -> Samples:
        return Samples(self.end[rows], self.length[rows], self.user[rows], self.target[rows])


def _check_splittable(data: SequenceData) -> None:
    if data.n_users and data.lengths.min() < 3:
        raise ValueError("leave-one-out needs at least 3 items per user (train, validation, test); filter first")


def train_samples(data: SequenceData, max_len: int = MAX_LEN) -> Samples:
    """Prefix augmentation of each user's training part (all but the last two items).

    For a training part ``i_1 .. i_m`` the samples are ``(i_1 → i_2), (i_1 i_2 → i_3), ...,
    (i_1 .. i_{m-1} → i_m)``, inputs truncated to their last `max_len` items.
    """
    _check_splittable(data)
    per_user = data.lengths - 3  # targets at positions 1 .. n-3 of a user's sequence
    user = np.repeat(np.arange(data.n_users), per_user)
    first = np.repeat(np.cumsum(per_user) - per_user, per_user)
    t = np.arange(len(user)) - first + 1  # 1 .. n-3
    end = data.offsets[user] + t
    return Samples(end, np.minimum(t, max_len), user, data.items[end])


def eval_samples(data: SequenceData, split: str, max_len: int = MAX_LEN) -> Samples:
    """One sample per user: ``valid`` predicts the second-last item, ``test`` the last one from all before it."""
    _check_splittable(data)
    back = {"valid": 2, "test": 1}
    if split not in back:
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    user = np.arange(data.n_users)
    end = data.offsets[1:] - back[split]
    length = np.minimum(end - data.offsets[:-1], max_len)
    return Samples(end, length, user, data.items[end])


@dataclass
class Group:
    """Rows `rows` of a batch, right-padded to their own longest input."""

    rows: Tensor  # (R_g,) positions in the batch
    seqs: Tensor  # (R_g, L_g) item ids, 0 = padding after the items
    lengths: Tensor  # (R_g,)


@dataclass
class Batch:
    """A batch of inputs split into length groups; `size` rows in all."""

    groups: list[Group]
    size: int

    def to(self, device: torch.device) -> Batch:
        return Batch(
            [Group(g.rows.to(device), g.seqs.to(device), g.lengths.to(device)) for g in self.groups], self.size
        )


def pad_inputs(items: np.ndarray, end: np.ndarray, length: np.ndarray) -> np.ndarray:
    """`(R, max(length))` right-padded inputs ``items[end - length : end]``."""
    width = int(length.max())
    offsets = np.arange(width)
    index = end[:, None] - length[:, None] + offsets[None, :]
    valid = offsets[None, :] < length[:, None]
    return np.where(valid, items[np.where(valid, index, 0)], 0)


# Length buckets: inputs of length <= 4, 5-8, 9-16, 17-32 and longer are padded separately.
BUCKET_EDGES = (4, 8, 16, 32)


def make_batch(
    items: np.ndarray, end: np.ndarray, length: np.ndarray, bucket_edges: tuple[int, ...] = BUCKET_EDGES
) -> Batch:
    """Inputs of one batch as length groups, each padded only to its own longest input.

    The batch itself (which rows are together, hence the in-batch negatives) is untouched; only the
    padding is. With causal attention and right padding a row's output does not depend on how much
    padding follows it, so the groups give exactly the outputs of one padded tensor, at a fraction of
    the cost on the long-tailed lengths of Beauty. `bucket_edges=()` pads the whole batch together.
    """
    bucket = np.searchsorted(np.asarray(bucket_edges, dtype=np.int64), length, side="left")
    groups = []
    for b in np.unique(bucket):
        rows = np.flatnonzero(bucket == b)
        seqs = pad_inputs(items, end[rows], length[rows])
        groups.append(Group(torch.from_numpy(rows), torch.from_numpy(seqs), torch.from_numpy(length[rows])))
    return Batch(groups, len(end))
