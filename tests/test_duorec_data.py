"""Loaders, filtering, split and batching of the DuoRec example (examples/duorec/data.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import data  # noqa: E402

SHARED_BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty" / "Beauty.txt"

# (user, item, time) in file order: u1 has a tie at t=20 (i3 before i1 in the file), u2 is listed out of order.
RECORDS = [
    ("u1", "i2", 10),
    ("u2", "i5", 30),
    ("u1", "i3", 20),
    ("u2", "i4", 10),
    ("u1", "i1", 20),
    ("u2", "i1", 20),
    ("u1", "i4", 5),
]
EXPECTED = {"u1": ["i4", "i2", "i3", "i1"], "u2": ["i4", "i1", "i5"]}


def write_dat(folder: Path) -> Path:
    path = folder / "ratings.dat"
    path.write_text("".join(f"{u}::{i}::4::{t}\n" for u, i, t in RECORDS))
    return path


def write_zip(folder: Path) -> Path:
    path = folder / "ml-1m.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-1m/ratings.dat", "".join(f"{u}::{i}::4::{t}\n" for u, i, t in RECORDS))
        archive.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")
    return path


def write_inter(folder: Path, name: str) -> Path:
    path = folder / name
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    path.write_text(header + "".join(f"{u}\t{i}\t4.0\t{t}\n" for u, i, t in RECORDS))
    return path


def write_csv(folder: Path) -> Path:
    path = folder / "ratings_Beauty.csv"
    path.write_text("".join(f"{u},{i},5.0,{t}\n" for u, i, t in RECORDS))
    return path


def review_lines() -> list[str]:
    return [
        json.dumps({"reviewerID": u, "asin": i, "overall": 5.0, "unixReviewTime": t, "reviewText": "ok, fine"})
        for u, i, t in RECORDS
    ]


def write_json(folder: Path) -> Path:
    path = folder / "reviews_Beauty_5.json"
    path.write_text("\n".join(review_lines()) + "\n")
    return path


def write_json_gz(folder: Path) -> Path:
    path = folder / "reviews_Beauty_5.json.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(review_lines()) + "\n")
    return path


def write_txt(folder: Path) -> Path:
    path = folder / "Beauty.txt"
    path.write_text("".join(f"{u} {' '.join(items)}\n" for u, items in EXPECTED.items()))
    return path


WRITERS = {
    "ratings.dat": write_dat,
    "ml-1m.zip": write_zip,
    "ml-1m.inter": lambda folder: write_inter(folder, "ml-1m.inter"),
    "Amazon_Beauty.inter": lambda folder: write_inter(folder, "Amazon_Beauty.inter"),
    "ratings_Beauty.csv": write_csv,
    "reviews_Beauty_5.json": write_json,
    "reviews_Beauty_5.json.gz": write_json_gz,
    "Beauty.txt": write_txt,
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_official_format_gives_the_same_chronological_sequences(tmp_path: Path, name: str) -> None:
    path = WRITERS[name](tmp_path)
    assert path.name == name
    assert data.group_by_user(data.load_records(path)) == EXPECTED


def write_text(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


GOOD_REVIEW = '{"reviewerID": "u1", "asin": "i1", "unixReviewTime": 5}\n'
# Malformed files of every format: (file name, content, what the one-line error must say).
MALFORMED = {
    "garbage json line": ("reviews_Beauty_5.json", GOOD_REVIEW + "{garbage\n", "line 2: not a review object"),
    "missing key": ("reviews_Beauty_5.json", '{"reviewerID": "u1", "asin": "i1"}\n', "line 1: .*no unixReviewTime"),
    "not an object": ("reviews_Beauty_5.json", GOOD_REVIEW + "[1, 2]\n", "line 2: expected one review object"),
    "bad json timestamp": (
        "reviews_Beauty_5.json",
        GOOD_REVIEW + '{"reviewerID": "u", "asin": "i", "unixReviewTime": "soon"}\n',
        "line 2: timestamp 'soon' is not a number",
    ),
    "nan timestamp": ("ratings_Beauty.csv", "u,i,5.0,1\nu,j,5.0,nan\n", "line 2: timestamp 'nan' is not finite"),
    "fake gzip": ("reviews_Beauty_5.json.gz", GOOD_REVIEW, "is not a readable gzip file"),
    "fake zip": ("ml-1m.zip", "1::1::5::1\n", "is not a readable zip archive"),
    "bad dat timestamp": ("ratings.dat", "1::1::5::1\n1::2::5::yesterday\n", "line 2: timestamp 'yesterday'"),
    "short dat line": ("ratings.dat", "1::1::5::1\n1::2\n", "line 2: expected UserID::MovieID::Rating::Timestamp"),
    "bad csv timestamp": ("ratings_Beauty.csv", "u,i,5.0,1\nu,j,5.0,x\n", "line 2: timestamp 'x' is not a number"),
    "short csv line": ("ratings_Beauty.csv", "u,i,5.0,1\nu,j\n", "line 2: expected user,item,rating,timestamp"),
    "bad inter timestamp": (
        "ml-1m.inter",
        "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\nu\tj\tlate\n",
        "line 3: timestamp 'late'",
    ),
    "short inter line": ("ml-1m.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\n", "line 2: expected 3"),
    "inter header": ("ml-1m.inter", "user:token\titem:token\nu\ti\n", "line 1: a RecBole .inter header"),
    "no 5-core": ("Beauty.txt", "u1 a b c\nu2 d e f\n", "no user and item keep 5 interactions"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_file_is_one_line_naming_the_file_line_and_fix(tmp_path: Path, case: str) -> None:
    pytest.importorskip("tqdm", reason="the DuoRec example needs tqdm: pip install -e '.[examples]'")
    import train

    name, text, expected = MALFORMED[case]
    path = write_text(tmp_path, name, text)
    dataset = "ml-1m" if name in ("ml-1m.zip", "ratings.dat", "ml-1m.inter") else "beauty"
    with pytest.raises(SystemExit) as stop:
        train.main(["--dataset", dataset, "--data-path", str(path), "--stats-only"])
    message = stop.value.code
    assert isinstance(message, str) and "\n" not in message, message  # a str code: one line, exit status 1
    assert message.startswith(f"error: {path}") and re.search(expected, message), message
    assert any(fix in message for fix in ("fix or remove the line", "download it again", "right file?")), message


def test_damaged_archives_name_the_file(tmp_path: Path) -> None:
    whole = tmp_path / "whole.json.gz"
    with gzip.open(whole, "wt") as f:
        f.write(GOOD_REVIEW * 2000)
    cut = tmp_path / "reviews_Beauty_5.json.gz"
    cut.write_bytes(whole.read_bytes()[:200])  # an interrupted download
    with pytest.raises(ValueError, match=f"{re.escape(str(cut))} is not a readable gzip file .*download it again"):
        list(data.load_records(cut))
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ml-1m/ratings.dat", "1::1::5::1\n1::x\n")
    with pytest.raises(ValueError, match=r"ml-1m\.zip \(ml-1m/ratings\.dat\) line 2: expected"):
        list(data.load_records(archive))
    with zipfile.ZipFile(tmp_path / "movies.zip", "w") as z:
        z.writestr("movies.dat", "1::Toy Story\n")
    with pytest.raises(ValueError, match="holds no ratings.dat"):
        list(data.load_records(tmp_path / "movies.zip"))


def test_a_csv_header_is_skipped_only_as_the_first_line(tmp_path: Path) -> None:
    path = write_text(tmp_path, "ratings_Beauty.csv", "user,item,rating,time\nu,i,5.0,3\n")
    assert list(data.load_records(path)) == [("u", "i", 3.0)]
    path.write_text("u,i,5.0,3\nuser,item,rating,time\n")  # a second "header" would silently drop a record
    with pytest.raises(ValueError, match="line 2: timestamp 'time'"):
        list(data.load_records(path))


def test_python_literal_review_lines_are_read(tmp_path: Path) -> None:
    path = tmp_path / "reviews_Beauty_5.json"
    path.write_text("{'reviewerID': 'u9', 'asin': 'B01', 'overall': 5.0, 'unixReviewTime': 7}\n")
    assert list(data.load_records(path)) == [("u9", "B01", 7.0)]


def test_unknown_format_and_missing_file_raise_clear_errors(tmp_path: Path) -> None:
    odd = tmp_path / "ratings.parquet"
    odd.write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        data.load_records(odd)
    with pytest.raises(FileNotFoundError, match="no data file"):
        data.load_records(tmp_path / "nothing.dat")


def test_find_data_file_picks_a_known_name_in_a_folder(tmp_path: Path) -> None:
    write_csv(tmp_path)
    write_txt(tmp_path)
    assert data.find_data_file("beauty", tmp_path).name == "Beauty.txt"  # the 5-core file is preferred
    assert data.find_data_file("beauty", tmp_path / "ratings_Beauty.csv").name == "ratings_Beauty.csv"
    with pytest.raises(FileNotFoundError, match="--download"):
        data.find_data_file("ml-1m", tmp_path)


def test_group_by_user_keeps_file_order_for_equal_times() -> None:
    records = [("u", "a", 2.0), ("u", "b", 1.0), ("u", "c", 2.0), ("u", "d", 1.0), ("v", "e", 0.0)]
    assert data.group_by_user(records) == {"u": ["b", "d", "a", "c"], "v": ["e"]}


def test_k_core_is_iterative() -> None:
    core_items = [f"i{n}" for n in range(5)]
    sequences = {f"a{n}": list(core_items) for n in range(5)}
    # b is removed for its unique item k; then j falls to 4 interactions, and with it the c users.
    sequences["b"] = ["i0", "i1", "i2", "j", "k"]
    for n in range(4):
        sequences[f"c{n}"] = ["j", "i0", "i1", "i2", "i3"]
    filtered = data.k_core(sequences, 5)
    assert filtered == {f"a{n}": core_items for n in range(5)}
    # A single pass (drop rare items once, then short users once) would have kept the c users.
    assert set(data.k_core(filtered, 5)) == set(filtered)


def test_k_core_counts_repeated_interactions_and_keeps_order() -> None:
    sequences = {f"u{n}": ["x", "y", "x", "z", "y", "w"][: 5 + (n % 2)] for n in range(5)}
    filtered = data.k_core(sequences, 5)
    assert filtered["u0"] == ["x", "y", "x", "z", "y"]  # z has 5 interactions; w (2) is dropped
    assert filtered["u1"] == ["x", "y", "x", "z", "y"]


def test_sequence_data_reindexes_items_from_one_by_first_appearance() -> None:
    seq = data.SequenceData.from_sequences("toy", {"u": ["b", "a", "b"], "v": ["c", "a"]})
    assert seq.items.tolist() == [1, 2, 1, 3, 2]
    assert seq.offsets.tolist() == [0, 3, 5]
    assert seq.stats() == {"users": 2, "items": 3, "interactions": 5}
    assert seq.item_counts().tolist() == [0, 2, 2, 1]


def toy_data() -> data.SequenceData:
    """Two users: items 1..7 and 11..15 (item ids equal to the tokens)."""
    sequences = {"u": [str(i) for i in range(1, 8)], "v": [str(i) for i in range(11, 16)]}
    seq = data.SequenceData.from_sequences("toy", sequences)
    seq.items = np.array([1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15])  # ids = tokens, for readable inputs
    return seq


def inputs(seq: data.SequenceData, samples: data.Samples) -> list[tuple[list[int], int]]:
    return [
        (seq.items[e - n : e].tolist(), int(t))
        for e, n, t in zip(samples.end, samples.length, samples.target, strict=True)
    ]


def test_leave_one_out_with_prefix_augmentation() -> None:
    seq = toy_data()
    train = data.train_samples(seq, max_len=50)
    assert inputs(seq, train) == [
        ([1], 2),
        ([1, 2], 3),
        ([1, 2, 3], 4),
        ([1, 2, 3, 4], 5),
        ([11], 12),
        ([11, 12], 13),
    ]
    assert train.user.tolist() == [0, 0, 0, 0, 1, 1]
    assert inputs(seq, data.eval_samples(seq, "valid")) == [([1, 2, 3, 4, 5], 6), ([11, 12, 13], 14)]
    assert inputs(seq, data.eval_samples(seq, "test")) == [([1, 2, 3, 4, 5, 6], 7), ([11, 12, 13, 14], 15)]


def test_inputs_are_truncated_to_the_last_max_len_items() -> None:
    seq = toy_data()
    assert inputs(seq, data.train_samples(seq, max_len=2))[3] == ([3, 4], 5)
    assert inputs(seq, data.eval_samples(seq, "test", max_len=3))[0] == ([4, 5, 6], 7)


def test_split_needs_three_items_per_user() -> None:
    seq = data.SequenceData.from_sequences("toy", {"u": ["a", "b"]})
    with pytest.raises(ValueError, match="at least 3 items"):
        data.train_samples(seq)


def test_make_batch_groups_rows_by_length_and_pads_right() -> None:
    seq = toy_data()
    train = data.train_samples(seq)
    batch = data.make_batch(seq.items, train.end, train.length, bucket_edges=(2,))
    assert batch.size == len(train)
    rows = sorted(r for g in batch.groups for r in g.rows.tolist())
    assert rows == list(range(len(train)))
    short, long = batch.groups
    assert short.seqs.tolist() == [[1, 0], [1, 2], [11, 0], [11, 12]]
    assert long.seqs.tolist() == [[1, 2, 3, 0], [1, 2, 3, 4]]
    assert long.lengths.tolist() == [3, 4]
    whole = data.make_batch(seq.items, train.end, train.length, bucket_edges=())
    assert len(whole.groups) == 1 and whole.groups[0].seqs.shape == (6, 4)


def test_synthetic_data_is_filtered_and_keeps_intents() -> None:
    seq = data.make_synthetic(n_users=300, seed=1)
    stats = seq.stats()
    assert set(stats) == {"users", "items", "interactions"}
    assert seq.intents is not None and len(seq.intents) == seq.n_users
    assert seq.lengths.min() >= 5 and seq.item_counts()[1:].min() >= 5
    again = data.make_synthetic(n_users=300, seed=1)
    assert np.array_equal(seq.items, again.items)
    # Users of one intent mostly share items: the false negatives are real.
    intent_items = [set(seq.items[seq.offsets[u] : seq.offsets[u + 1]]) for u in range(seq.n_users)]
    same = [
        len(intent_items[a] & intent_items[b])
        for a in range(40)
        for b in range(40)
        if a != b and seq.intents[a] == seq.intents[b]
    ]
    other = [
        len(intent_items[a] & intent_items[b]) for a in range(40) for b in range(40) if seq.intents[a] != seq.intents[b]
    ]
    assert np.mean(same) > 5 * np.mean(other)


def test_download_fails_with_a_clear_message_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match=r"could not download ml-1m from https://files\.grouplens\.org.*--data-path"):
        data.download("ml-1m", tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written left behind


def test_download_verifies_sha256_and_keeps_nothing_unverified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"not the real archive"
    fetched: list[str] = []

    def fake_fetch(url: str, target: Path, timeout: float) -> None:
        fetched.append(url)
        target.write_bytes(payload)

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    with pytest.raises(ValueError, match=r"ml-1m\.zip is 20 bytes, expected 5917549 .*download again"):
        data.download("ml-1m", tmp_path)
    unsized = data.Download(data.DOWNLOADS["ml-1m"].url, "ml-1m.zip", sha256=data.DOWNLOADS["ml-1m"].sha256)
    monkeypatch.setitem(data.DOWNLOADS, "ml-1m", unsized)
    with pytest.raises(ValueError, match=f"has sha256 {hashlib.sha256(payload).hexdigest()}, expected"):
        data.download("ml-1m", tmp_path)
    assert not any(tmp_path.iterdir())  # a download that does not match is not left where it would be found
    pinned = data.Download("https://example.invalid/ml-1m.zip", "ml-1m.zip", sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(data.DOWNLOADS, "ml-1m", pinned)
    path = data.download("ml-1m", tmp_path)
    assert path.read_bytes() == payload and sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m.zip"]
    assert data.download("ml-1m", tmp_path) == path and len(fetched) == 3  # already there: verified, not fetched
    path.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        data.download("ml-1m", tmp_path)


def test_every_download_is_pinned_by_a_sha256_or_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ml-1m.zip's sha256 and size as TensorFlow Datasets pins them (url_checksums/movielens.txt).
    assert data.DOWNLOADS["ml-1m"].sha256 == "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
    assert data.DOWNLOADS["ml-1m"].size == 5_917_549
    for spec in data.DOWNLOADS.values():
        assert spec.sha256 is None or (len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0)

    def no_fetch(*args: object) -> None:
        raise AssertionError("an unpinned file must not be fetched")

    monkeypatch.setattr(data, "_fetch", no_fetch)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RuntimeError, match="cannot create the download folder .*a-file/ml-1m"):
        data.download("ml-1m", blocker / "ml-1m")
    # No sha256 of reviews_Beauty_5.json.gz is published: --download refuses it and says what to do instead.
    with pytest.raises(ValueError, match=r"no sha256 of reviews_Beauty_5\.json\.gz is published.*--data-path"):
        data.download("beauty", tmp_path)


@pytest.mark.skipif(not SHARED_BEAUTY.is_file(), reason="../shared/data/beauty/Beauty.txt is not beside this checkout")
def test_beauty_statistics_match_the_papers() -> None:
    seq = data.load_dataset("beauty", SHARED_BEAUTY)
    assert seq.stats() == {"users": 22_363, "items": 12_101, "interactions": 198_502}
    assert len(data.train_samples(seq)) == 198_502 - 3 * 22_363
