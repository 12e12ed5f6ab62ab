import json
import os
import struct
import time
from dataclasses import replace
from datetime import date

import numpy as np
import pytest

from psi import table as table_module
from psi.errors import InputError
from psi.labels import Record, decode_label, encode_label
from psi.table import (
    Delta,
    Table,
    apply,
    build_table,
    derive,
    diff,
    match,
    open_entry,
)

SUITE = "ristretto255-SHA512"


def random_outputs(n: int) -> np.ndarray:
    return np.frombuffer(os.urandom(64 * n), np.uint8).reshape(n, 64).copy()


def label(i: int, records: int = 1) -> bytes:
    """An encoded label of ``records`` records; odd persons imprisoned, even ones deceased."""
    status = "imprisoned" if i % 2 else "deceased"
    return encode_label(
        [Record(status, date(2020, 1, 1 + k), handle=os.urandom(16)) for k in range(records)]
    )


def make(n: int = 50, version: int = 1, **kwargs) -> tuple[Table, np.ndarray, list[bytes]]:
    outputs = random_outputs(n)
    labels = [label(i, 1 + i % 3) for i in range(n)]
    return build_table("prisons", 1, version, outputs, labels, SUITE, **kwargs), outputs, labels


def found(table: Table, outputs: np.ndarray) -> dict[int, bytes]:
    return {m.query: m.label for m in match(table, outputs).matches}


def test_build_and_match_round_trip():
    table, outputs, labels = make()
    assert len(table) == 50 and np.all(table.tags[1:] >= table.tags[:-1])
    queries = np.concatenate([random_outputs(20), outputs[::5]])
    result = match(table, queries)
    assert {m.query: m.label for m in result.matches} == {20 + k: labels[5 * k] for k in range(10)}
    assert all(m.written == 1 for m in result.matches) and result.false_hits == 0
    assert decode_label(result.matches[0].label).records


def test_rows_are_padded_to_one_size():
    table, _, labels = make()
    assert len({len(x) for x in labels}) == 3
    assert table.header.label_size == max(map(len, labels))
    assert table.sealed.shape == (50, 12 + 4 + table.header.label_size + 16)
    wider, outputs, labels = make(label_size=500)
    assert wider.header.label_size == 500
    assert found(wider, outputs) == dict(enumerate(labels))


def test_non_matching_output_opens_no_row():
    table, _, _ = make()
    _, keys = derive("prisons", 1, random_outputs(3))
    for key in keys:
        assert all(open_entry(table, i, key.tobytes()) is None for i in range(len(table)))


def test_associated_data_binds_dataset_epoch_and_written_version():
    table, outputs, labels = make(5)
    index = int(np.flatnonzero(table.tags == derive("prisons", 1, outputs[:1])[0][0])[0])
    key = derive("prisons", 1, outputs[:1])[1][0].tobytes()
    assert open_entry(table, index, key) == labels[0]
    for change in ({"dataset": "police"}, {"epoch": 2}):
        moved = Table(replace(table.header, **change), table.tags, table.written, table.sealed)
        assert open_entry(moved, index, key) is None
    rewritten = table.written.copy()
    rewritten[index] = 0
    moved = Table(table.header, table.tags, rewritten, table.sealed)
    assert open_entry(moved, index, key) is None


def test_epochs_and_datasets_share_no_tags():
    outputs = random_outputs(1000)
    tags = [
        derive(ds, epoch, outputs)[0]
        for ds, epoch in [("prisons", 1), ("prisons", 2), ("courts", 1)]
    ]
    for a in range(3):
        for b in range(a + 1, 3):
            assert len(np.intersect1d(tags[a], tags[b])) == 0


def test_same_person_twice_is_rejected():
    outputs = random_outputs(3)
    outputs[2] = outputs[0]
    with pytest.raises(InputError, match="appears twice"):
        build_table("prisons", 1, 1, outputs, [label(i) for i in range(3)], SUITE)


def test_bad_outputs_and_counts_are_rejected():
    with pytest.raises(InputError, match="64 bytes"):
        build_table("prisons", 1, 1, np.zeros((2, 32), np.uint8), [b"x", b"y"], SUITE)
    with pytest.raises(InputError, match="labels"):
        build_table("prisons", 1, 1, random_outputs(2), [b"x"], SUITE)
    with pytest.raises(InputError, match="dataset id"):
        build_table("prisons/../x", 1, 1, random_outputs(1), [b"x"], SUITE)


@pytest.fixture
def weak_tags(monkeypatch):
    """Tags of 3 bits, so that a small table has many duplicate tags."""
    real = table_module.derive

    def derive_weak(dataset, epoch, outputs):
        tags, keys = real(dataset, epoch, outputs)
        return tags & np.uint64(7), keys

    monkeypatch.setattr(table_module, "derive", derive_weak)


def test_duplicate_tags_are_matched_and_false_hits_counted(weak_tags):
    table, outputs, labels = make(40)
    assert len(np.unique(table.tags)) <= 8
    result = match(table, outputs)
    assert {m.query: m.label for m in result.matches} == dict(enumerate(labels))
    assert result.false_hits > 0
    strangers = random_outputs(10)
    stranger = match(table, strangers)
    query_tags = table_module.derive("prisons", 1, strangers)[0]
    assert stranger.matches == []
    assert stranger.false_hits == sum(int(np.sum(table.tags == t)) for t in query_tags) > 0


def test_deltas_with_duplicate_tags_apply_exactly(weak_tags):
    old, outputs, labels = make(40)
    labels = list(labels)
    labels[3] = label(3, 3)
    new = build_table("prisons", 1, 2, outputs[1:], labels[1:], SUITE, previous=old)
    delta = diff(old, new)
    assert (delta.header.removed, delta.header.added) == (2, 1)
    assert apply(old, delta) == new


def test_matching_100k_against_100k_is_fast():
    n = 100_000
    outputs = random_outputs(n)
    labels = [encode_label([Record("imprisoned", handle=os.urandom(16))])] * n
    start = time.perf_counter()
    table = build_table("prisons", 1, 1, outputs, labels, SUITE)
    built = time.perf_counter() - start
    queries = random_outputs(n)
    queries[::100] = outputs[::100]
    start = time.perf_counter()
    result = match(table, queries)
    elapsed = time.perf_counter() - start
    assert len(result.matches) == 1000 and result.false_hits == 0
    assert elapsed < 2.0, f"match took {elapsed:.2f}s"
    assert built < 10.0, f"build took {built:.2f}s"


# ------------------------------------------------------------------------------- files, streams


def test_save_and_load_with_mmap(tmp_path):
    table, outputs, labels = make()
    path = tmp_path / "prisons.kt"
    table.save(path)
    assert not [p for p in tmp_path.iterdir() if p.name != "prisons.kt"]
    loaded = Table.load(path)
    assert isinstance(loaded.sealed, np.memmap) and not loaded.sealed.flags.writeable
    assert loaded == table and Table.load(path, mmap=False) == table
    assert found(loaded, outputs) == dict(enumerate(labels))
    row = table.header.row_size
    assert path.stat().st_size <= 64 * 5 + len(table) * (8 + 4 + row) + 3 * 64


def test_layout_is_aligned_and_documented(tmp_path):
    table, _, _ = make(10)
    data = table.to_bytes()
    assert data[:8] == b"KINLINKT"
    (length,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[12 : 12 + length])
    assert header["format"] == 1 and header["count"] == 10 and header["version"] == 1
    tags_at = -(-(12 + length) // 64) * 64
    assert data[tags_at : tags_at + 80] == table.tags.tobytes()
    written_at = tags_at + 128
    assert data[written_at : written_at + 40] == table.written.tobytes()
    sealed_at = written_at + 64
    assert data[sealed_at : sealed_at + table.sealed.nbytes] == table.sealed.tobytes()
    assert len(data) == -(-(sealed_at + table.sealed.nbytes) // 64) * 64


def test_empty_table_round_trips(tmp_path):
    empty = build_table("prisons", 1, 1, random_outputs(0), [], SUITE)
    empty.save(tmp_path / "e.kt")
    assert Table.load(tmp_path / "e.kt") == empty
    assert match(empty, random_outputs(5)).matches == []


def corrupt(data: bytes, what: str) -> bytes:
    length = struct.unpack_from("<I", data, 8)[0]
    header = data[12 : 12 + length]
    if what == "magic":
        return b"NOTKINLK" + data[8:]
    if what == "format":
        return data[:12] + header.replace(b'"format":1', b'"format":7') + data[12 + length :]
    if what == "json":
        return data[:12] + b"{" * length + data[12 + length :]
    if what == "field":
        return data[:12] + header.replace(b'"count"', b'"cuont"') + data[12 + length :]
    if what == "truncated":
        return data[:-1]
    if what == "trailing":
        return data + b"\0"
    if what == "header_cut":
        return data[:20]
    if what == "empty":
        return b""
    raise AssertionError(what)


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("magic", "bad magic"),
        ("format", "unsupported table format 7"),
        ("json", "corrupt table header"),
        ("field", "corrupt header"),
        ("truncated", "truncated table"),
        ("trailing", "trailing bytes"),
        ("header_cut", "truncated table"),
        ("empty", "truncated table"),
    ],
)
def test_bad_files_are_rejected_naming_the_file(tmp_path, what, message):
    table, _, _ = make(10)
    path = tmp_path / "bad.kt"
    path.write_bytes(corrupt(table.to_bytes(), what))
    for mmap in (True, False):
        with pytest.raises(InputError, match=message) as error:
            Table.load(path, mmap=mmap)
        assert str(path) in str(error.value)


def test_unsorted_tags_and_missing_file_are_rejected(tmp_path):
    table, _, _ = make(10)
    reversed_tags = Table(table.header, table.tags[::-1].copy(), table.written, table.sealed)
    with pytest.raises(InputError, match="not sorted"):
        Table.from_bytes(reversed_tags.to_bytes(), "upload")
    with pytest.raises(InputError, match="cannot read table") as error:
        Table.load(tmp_path / "missing.kt")
    assert "missing.kt" in str(error.value)
    with pytest.raises(InputError, match="not a kinlink delta"):
        Delta.from_bytes(table.to_bytes())


def test_chunks_stream_and_reassemble():
    table, _, _ = make(200)
    data = table.to_bytes()
    for size in (1, 7, 64, 1000, len(data), 10 * len(data)):
        chunks = list(table.iter_chunks(size))
        assert b"".join(chunks) == data
        assert all(len(c) == size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= size
    rng = np.random.default_rng(1)
    cuts = sorted(set(rng.integers(0, len(data), 30).tolist()))
    assembler = Table.assembler("peer")
    for start, stop in zip([0, *cuts], [*cuts, len(data)], strict=True):
        assembler.feed(data[start:stop])
    assert assembler.finish() == table
    assert Table.from_bytes(data) == table


def test_stream_errors():
    table, _, _ = make(20)
    data = table.to_bytes()
    short = Table.assembler("peer")
    short.feed(data[:-10])
    with pytest.raises(InputError, match="peer: truncated table"):
        short.finish()
    long = Table.assembler("peer")
    with pytest.raises(InputError, match="more bytes"):
        long.feed(data + b"x")
    with pytest.raises(InputError, match="exceeds the limit"):
        Table.assembler("peer", max_bytes=1000).feed(data)
    with pytest.raises(InputError, match="bad magic"):
        Table.assembler("peer").feed(b"KINLINKD")


def test_memory_mapped_table_streams_without_copy(tmp_path):
    table, _, _ = make(100)
    table.save(tmp_path / "t.kt")
    mapped = Table.load(tmp_path / "t.kt")
    assert b"".join(mapped.iter_chunks(333)) == (tmp_path / "t.kt").read_bytes()


# ------------------------------------------------------------------------------------- deltas


def evolve(old: Table, outputs: np.ndarray, labels: list[bytes], version: int):
    """Remove persons 0-4, change 5-9, add 5 new ones; keep the rest."""
    labels = list(labels)
    for i in range(5, 10):
        labels[i] = label(i + 1)
    new_outputs = np.concatenate([outputs[5:], random_outputs(5)])
    new_labels = labels[5:] + [label(i) for i in range(5)]
    new = build_table("prisons", 1, version, new_outputs, new_labels, SUITE, previous=old)
    return new, new_outputs, new_labels


def test_unchanged_entries_keep_their_rows():
    old, outputs, labels = make()
    new, new_outputs, new_labels = evolve(old, outputs, labels, 2)
    written = {m.query: m.written for m in match(new, new_outputs).matches}
    assert [written[i] for i in range(5)] == [2] * 5  # changed
    assert {written[i] for i in range(5, 45)} == {1}  # unchanged
    assert [written[i] for i in range(45, 50)] == [2] * 5  # added
    assert found(new, new_outputs) == dict(enumerate(new_labels))
    assert len({r.tobytes() for r in old.sealed} & {r.tobytes() for r in new.sealed}) == 40


def test_diff_and_apply(tmp_path):
    old, outputs, labels = make()
    new, _, _ = evolve(old, outputs, labels, 2)
    delta = diff(old, new)
    assert (delta.header.removed, delta.header.added) == (10, 10)
    assert (delta.header.from_version, delta.header.to_version) == (1, 2)
    assert apply(old, delta) == new
    delta.save(tmp_path / "d.kd")
    loaded = Delta.load(tmp_path / "d.kd")
    assert apply(old, loaded) == new
    assert apply(old, Delta.from_bytes(b"".join(delta.iter_chunks(100)))) == new
    assert apply(old, delta).to_bytes() == new.to_bytes()


def test_deltas_chain_and_refuse_the_wrong_base():
    v1, outputs, labels = make()
    v2, outputs2, labels2 = evolve(v1, outputs, labels, 2)
    v3, _, _ = evolve(v2, outputs2, labels2, 3)
    d12, d23 = diff(v1, v2), diff(v2, v3)
    assert apply(apply(v1, d12), d23) == v3
    with pytest.raises(InputError, match="from version 2 to 3 but the table is at version 1"):
        apply(v1, d23)
    with pytest.raises(InputError, match="does not follow"):
        diff(v2, v1)
    other, _, _ = make()
    other = Table(replace(other.header, dataset="police"), other.tags, other.written, other.sealed)
    with pytest.raises(InputError, match="dataset differs"):
        apply(other, d12)
    stranger, _, _ = make()
    with pytest.raises(InputError, match="removes entries the table does not have"):
        apply(stranger, d12)
    with pytest.raises(InputError, match="does not follow"):
        build_table("prisons", 1, 1, outputs, labels, SUITE, previous=v1)


def test_label_growth_reseals_everything():
    old, outputs, labels = make()
    labels = list(labels)
    labels[0] = label(0, 10)
    new = build_table("prisons", 1, 2, outputs, labels, SUITE, previous=old)
    assert new.header.label_size > old.header.label_size
    assert set(new.written.tolist()) == {2}
    delta = diff(old, new)
    assert (delta.header.removed, delta.header.added) == (50, 50)
    assert apply(old, delta) == new
