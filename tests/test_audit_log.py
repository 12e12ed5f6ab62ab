"""The audit log: RFC 9162 Merkle proofs, refusing identifiers, verification that detects and
locates each kind of tampering, and durability when the writer is killed."""

import hashlib
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.shared.audit.log import (
    AuditLog,
    VerifyReport,
    encode_entry,
    generate_key,
    head_message,
    key_fingerprint,
    load_signing_key,
    public_key_path,
    public_key_pem,
    read_log,
    verify_log,
)
from nodes.shared.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from psi.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

# -- RFC 6962 test data ------------------------------------------------------------------------
# The Certificate Transparency reference vectors (certificate-transparency merkle_tree_test.cc, as
# carried by transparency-dev/merkle testonly/constants.go and proof/verify_test.go).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
_H96, _H5F, _H6B = (
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    ("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
)
_HBC = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
_HCA = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"
_H0E = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"
_HB0 = "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"
# (0-based leaf index, tree size, audit path)
CT_INCLUSION = [
    (0, 1, []),
    (0, 8, [_H96, _H5F, _H6B]),
    (5, 8, [_HBC, _HCA, CT_ROOTS[3]]),
    (2, 3, [CT_ROOTS[1]]),
    (1, 5, [CT_ROOTS[0], _H5F, _HBC]),
]
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, [_H96, _H5F, _H6B]),
    (6, 8, [_H0E, _HCA, CT_ROOTS[3]]),
    (2, 5, [_H5F, _HBC]),
    (6, 7, [_H0E, _HB0, CT_ROOTS[3]]),
]


def _tree(leaves: list[bytes]) -> MerkleTree:
    return MerkleTree(leaf_hash(d) for d in leaves)


def test_rfc6962_roots():
    assert MerkleTree().root() == EMPTY_ROOT == hashlib.sha256().digest()
    tree = _tree(CT_LEAVES)
    for size, expected in enumerate(CT_ROOTS, start=1):
        assert tree.root(size).hex() == expected


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_rfc6962_inclusion_proofs(index, size, path):
    tree = _tree(CT_LEAVES)
    assert [p.hex() for p in tree.inclusion_proof(index, size)] == path
    root = bytes.fromhex(CT_ROOTS[size - 1])
    assert verify_inclusion(
        leaf_hash(CT_LEAVES[index]), index, size, tree.inclusion_proof(index, size), root
    )


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_rfc6962_consistency_proofs(old, new, path):
    tree = _tree(CT_LEAVES)
    assert [p.hex() for p in tree.consistency_proof(old, new)] == path
    old_root, new_root = (bytes.fromhex(CT_ROOTS[n - 1]) for n in (old, new))
    assert verify_consistency(old, new, old_root, new_root, [bytes.fromhex(p) for p in path])


# -- an independent, naive Merkle tree ----------------------------------------------------------


def _naive_root(data: list[bytes]) -> bytes:
    """MTH straight from the RFC's definition, over the entries themselves."""
    if not data:
        return hashlib.sha256().digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < len(data):
        k *= 2
    return hashlib.sha256(b"\x01" + _naive_root(data[:k]) + _naive_root(data[k:])).digest()


def _naive_inclusion(data: list[bytes], index: int) -> list[bytes]:
    """Level by level, promoting a last odd node unchanged (the classic CT construction)."""
    level = [hashlib.sha256(b"\x00" + d).digest() for d in data]
    path = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        level = [
            node_hash(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
        index //= 2
    return path


def _naive_subproof(m: int, data: list[bytes], whole: bool) -> list[bytes]:
    if m == len(data):
        return [] if whole else [_naive_root(data)]
    k = 1
    while k * 2 < len(data):
        k *= 2
    if m <= k:
        return [*_naive_subproof(m, data[:k], whole), _naive_root(data[k:])]
    return [*_naive_subproof(m - k, data[k:], False), _naive_root(data[:k])]


DATA = [f"entry {i}".encode() for i in range(40)]


def test_tree_and_frontier_match_naive_tree_for_every_size():
    tree, frontier = MerkleTree(), Frontier()
    for size in range(len(DATA) + 1):
        expected = _naive_root(DATA[:size])
        assert tree.root() == frontier.root() == expected
        assert Frontier.from_bytes(size, frontier.to_bytes()).root() == expected
        if size < len(DATA):
            tree.append(leaf_hash(DATA[size]))
            frontier.append(leaf_hash(DATA[size]))
    for size in range(len(DATA) + 1):  # and every earlier size of the full tree
        assert tree.root(size) == _naive_root(DATA[:size])


def test_proofs_match_naive_tree_and_verify_for_every_size():
    tree = _tree(DATA)
    for size in range(1, len(DATA) + 1):
        root = _naive_root(DATA[:size])
        for index in range(size):
            path = tree.inclusion_proof(index, size)
            assert path == _naive_inclusion(DATA[:size], index)
            assert verify_inclusion(leaf_hash(DATA[index]), index, size, path, root)
        for old in range(1, size + 1):
            proof = tree.consistency_proof(old, size)
            assert proof == _naive_subproof(old, DATA[:size], True)
            assert verify_consistency(old, size, _naive_root(DATA[:old]), root, proof)
    assert tree.consistency_proof(0, 5) == []
    assert verify_consistency(0, 5, EMPTY_ROOT, tree.root(5), [])


def _flip(proof: list[bytes], i: int) -> list[bytes]:
    return [bytes([p[0] ^ 8, *p[1:]]) if j == i else p for j, p in enumerate(proof)]


def test_corrupted_proofs_fail():
    tree, other = _tree(DATA[:17]), _tree([b"x", *DATA[1:17]])
    some = hashlib.sha256(b"some").digest()
    for size in range(1, 18):
        root = tree.root(size)
        for index in range(size):
            leaf, path = leaf_hash(DATA[index]), tree.inclusion_proof(index, size)
            wrong = [
                (leaf, index + 1, size, path, root),
                (leaf, index, size * 2, path, root),
                (leaf_hash(b"wrong"), index, size, path, root),
                (leaf, index, size, path, some),
                (leaf, index, size, [*path, root], root),
                (leaf, index, size, [root, *path], root),
                *((leaf, index, size, _flip(path, i), root) for i in range(len(path))),
            ]
            if path:
                wrong.append((leaf, index, size, path[:-1], root))
            if index:
                wrong.append((leaf, index - 1, size, path, root))
            assert not any(verify_inclusion(*args) for args in wrong)
        for old in range(1, size):
            old_root, proof = tree.root(old), tree.consistency_proof(old, size)
            wrong = [
                (old - 1, size, old_root, root, proof),
                (old + 1, size, old_root, root, proof),
                (old, size * 2, old_root, root, proof),
                (old, size, other.root(old), root, proof),  # a rewritten history
                (old, size, old_root, some, proof),
                (old, size, root, old_root, proof),
                (old, size, old_root, root, []),
                (old, size, old_root, root, proof[:-1]),
                (old, size, old_root, root, [*proof, root]),
                (old, size, old_root, root, [old_root, *proof]),
                *((old, size, old_root, root, _flip(proof, i)) for i in range(len(proof))),
            ]
            assert not any(verify_consistency(*args) for args in wrong), (old, size)
    assert not verify_consistency(3, 3, tree.root(3), tree.root(4), [])
    assert not verify_consistency(4, 3, tree.root(4), tree.root(3), [])
    assert not verify_inclusion(leaf_hash(DATA[0]), 1, 1, [], tree.root(1))


# -- the log -------------------------------------------------------------------------------------

CA_FINGERPRINT = "0123456789012345678901abcdef" + "0" * 36  # a real fingerprint may hold digit runs
EVENT = {
    "event": "session_opened",
    "session_id": "s-1",
    "peer": {"cn": "civil-affairs", "fingerprint": CA_FINGERPRINT},
    "dataset": "prison",
    "purpose": "screening",
    "legal_basis_ref": "case 2024-17",
    "declared": 120,
    "limit": 1000,
    "key_epoch": 1,
    "table_version": 3,
}


@pytest.fixture
def key(tmp_path) -> Ed25519PrivateKey:
    return generate_key(tmp_path / "audit-key.pem")


def _log(path: Path, key, entries: int = 30, sign_every: int = 10) -> AuditLog:
    log = AuditLog(path, key, "prison", sign_every=sign_every)
    for i in range(entries):
        log.append({**EVENT, "session_id": f"s-{i}", "declared": i})
    return log


def test_generate_and_load_key(tmp_path, key):
    path = tmp_path / "audit-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_path(path) == tmp_path / "audit-key.pub.pem"
    assert public_key_path(path).read_bytes() == public_key_pem(key)
    assert key_fingerprint(load_signing_key(path)) == key_fingerprint(key)
    with pytest.raises(InputError, match="never overwritten"):
        generate_key(path)
    with pytest.raises(InputError, match="cannot read signing key"):
        load_signing_key(tmp_path / "none.pem")


def test_append_writes_canonical_entries_and_signs_heads(tmp_path, key):
    path = tmp_path / "log.sqlite"
    log = _log(path, key, entries=25)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    head = log.sign_tree_head()
    assert head.size == 25
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    rows = db.execute("SELECT idx, data, leaf FROM entries ORDER BY idx").fetchall()
    times = []
    for idx, data, leaf in rows:
        entry = json.loads(data)
        assert entry["index"] == idx and entry["declared"] == idx
        assert data == encode_entry(entry) and " " not in data.replace("case 2024-17", "")
        assert leaf == leaf_hash(data.encode())
        times.append(entry["time"])
    assert times == sorted(times) and times[0].endswith("+00:00")
    sizes = [s for (s,) in db.execute("SELECT size FROM tree_heads ORDER BY seq")]
    assert sizes == [10, 20, 25]  # every sign_every entries, then on demand
    meta = dict(db.execute("SELECT key, value FROM meta"))
    assert meta["key_fingerprint"] == key_fingerprint(key) and meta["owner"] == "prison"
    assert verify_log(path, public_key_pem(key)).ok


def test_log_proofs_verify_against_signed_heads(tmp_path, key):
    log = _log(tmp_path / "log.sqlite", key, entries=13, sign_every=5)
    head = log.sign_tree_head()
    first = log._tree(5).root()
    entry = (
        sqlite3.connect(tmp_path / "log.sqlite")
        .execute("SELECT data FROM entries WHERE idx = 7")
        .fetchone()[0]
    )
    proof = log.inclusion_proof(7, 13)
    assert verify_inclusion(leaf_hash(entry.encode()), 7, 13, proof, head.root_hash)
    assert verify_consistency(5, 13, first, head.root_hash, log.consistency_proof(5, 13))
    with pytest.raises(ValueError, match="only 13 entries"):
        log.inclusion_proof(0, 14)


IDENTIFIER = "11010519491231002X"


@pytest.mark.parametrize(
    "change",
    [
        {"reason": f"no match for {IDENTIFIER}"},
        {"reason": "11010519491231002"},  # 17 digits, check character cut off
        {"reason": "110105491231002"},  # legacy 15-digit form
        {"legal_basis_ref": "１１０１０５１９４９１２３１００２Ｘ"},  # full-width digits
        {"legal_basis_ref": "110105_19491231_002X"},  # any separator
        {"peer": {"cn": f"id {IDENTIFIER}"}},
        {"detail": "x" * 5000},
        {"reason": "a\nforged line"},
    ],
)
def test_append_withholds_text_it_cannot_log_and_logs_the_event(tmp_path, key, change):
    """The event is logged; the text that may hold a number, or is too long, is not."""
    log = AuditLog(tmp_path / "log.sqlite", key, "prison")
    log.append({**EVENT, **change})
    (entry,) = read_log(tmp_path / "log.sqlite").entries
    stored = json.dumps(entry, ensure_ascii=False)
    assert "110105" not in stored and "１１０" not in stored and "xxxxx" not in stored
    assert "(withheld: " in stored and "forged" not in stored


@pytest.mark.parametrize(
    "change",
    [
        {"declared": 110105194912310021},
        {"dataset": b"\x01" * 32},  # a blinded element
        {"reason": bytearray(b"x")},
        {"peer": {"cn": "civil-affairs", "fingerprint": b"\x00" * 32}},
        {"peer": {"cn": "civil-affairs", "fingerprint": IDENTIFIER}},
        {IDENTIFIER: 1},
        {"element": "x"},  # unknown field
        {"time": "2025-01-01T00:00:00+00:00"},  # set by the log
        {"index": 4},
        {"event": "session_closed"},
        {"declared": -1},
        {"declared": True},
        {"peer": {"name": "civil-affairs"}},
    ],
)
def test_append_refuses_identifiers_bytes_and_unknown_fields(tmp_path, key, change):
    log = AuditLog(tmp_path / "log.sqlite", key, "prison")
    with pytest.raises(ValueError) as info:
        log.append({**EVENT, **change})
    assert "110105" not in str(info.value) and "１１０" not in str(info.value)
    assert log.sign_tree_head().size == 0  # nothing was written


def test_reopening_checks_owner_and_key(tmp_path, key):
    _log(tmp_path / "log.sqlite", key, entries=3).close()
    with pytest.raises(InputError, match="a new key needs a new log"):
        AuditLog(tmp_path / "log.sqlite", Ed25519PrivateKey.generate(), "prison")
    with pytest.raises(InputError, match="log of 'prison'"):
        AuditLog(tmp_path / "log.sqlite", key, "police")
    again = AuditLog(tmp_path / "log.sqlite", key, "prison")
    assert again.append(EVENT) == 3
    budgets = sqlite3.connect(tmp_path / "budgets.sqlite")
    budgets.execute("CREATE TABLE charges (client TEXT)")
    budgets.close()
    with pytest.raises(InputError, match="not a kinlink audit log"):
        AuditLog(tmp_path / "budgets.sqlite", key, "prison")
    assert [
        n
        for (n,) in sqlite3.connect(tmp_path / "budgets.sqlite").execute(
            "SELECT name FROM sqlite_master"
        )
    ] == ["charges"]
    (tmp_path / "text.sqlite").write_text("not a database, just text\n" * 100)
    with pytest.raises(InputError, match="not a kinlink audit log"):
        AuditLog(tmp_path / "text.sqlite", key, "prison")
    with pytest.raises(InputError, match="not a kinlink audit log"):
        verify_log(tmp_path / "text.sqlite", public_key_pem(key))
    with pytest.raises(InputError, match="no audit log"):
        verify_log(tmp_path / "missing.sqlite", public_key_pem(key))


def test_concurrent_writers_keep_one_tree(tmp_path, key):
    path = tmp_path / "log.sqlite"
    first = AuditLog(path, key, "prison", sign_every=7)
    second = AuditLog(path, key, "prison", sign_every=7)  # as another process would

    def write(log: AuditLog) -> None:
        for i in range(40):
            log.append({**EVENT, "declared": i})

    threads = [threading.Thread(target=write, args=(log,)) for log in (first, first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert second.sign_tree_head().size == 120
    report = verify_log(path, public_key_pem(key))
    assert report.ok and report.entries == 120 and report.signed == 120


# -- tampering -----------------------------------------------------------------------------------


@dataclass
class Tamper:
    """A log of 30 entries with heads at 10, 20 and 30, edited the way an intruder would: with
    sqlite3 on the file."""

    path: Path
    key: Ed25519PrivateKey

    def rows(self, query: str, *params: object) -> list[tuple]:
        db = sqlite3.connect(self.path)
        try:
            return db.execute(query, params).fetchall()
        finally:
            db.close()

    def sql(self, *statements: tuple) -> VerifyReport:
        db = sqlite3.connect(self.path)
        with db:
            for statement in statements:
                db.execute(statement[0], statement[1:])
        db.close()
        return verify_log(self.path, public_key_pem(self.key))


@pytest.fixture
def tamper(tmp_path, key) -> Tamper:
    _log(tmp_path / "log.sqlite", key).close()
    tamper = Tamper(tmp_path / "log.sqlite", key)
    assert tamper.sql().ok
    return tamper


def _kinds(report: VerifyReport) -> set[str]:
    return {p.kind for p in report.problems}


EDIT_12 = (
    "UPDATE entries SET data = replace(data, '\"declared\":12', '\"declared\":2') WHERE idx = 12",
)


def test_detects_edited_entry(tamper):
    report = tamper.sql(EDIT_12)
    assert not report.ok and report.first_bad_entry == 12
    assert {"edited", "root", "state"} == _kinds(report)
    assert str(report.problems[0]).startswith("entry 12: its content does not match")
    assert {p.head for p in report.problems if p.kind == "root"} == {1, 2}  # heads of 20 and 30


def test_detects_edit_with_recomputed_leaf_hash_through_the_heads(tamper):
    """A careful intruder also fixes the leaf column: the signed heads still catch the edit, and
    locate it between the last head that matches (10 entries) and the first that does not."""
    (data,) = tamper.rows("SELECT data FROM entries WHERE idx = 12")[0]
    edited = data.replace('"declared":12', '"declared":2')
    report = tamper.sql(
        ("UPDATE entries SET data = ?, leaf = ? WHERE idx = 12", edited, leaf_hash(edited.encode()))
    )
    assert _kinds(report) == {"root", "state"}
    assert {p.head for p in report.problems if p.kind == "root"} == {1, 2}  # head 0 still holds


def test_detects_deleted_entry(tamper):
    report = tamper.sql(("DELETE FROM entries WHERE idx = 7",))
    assert [p.entry for p in report.problems if p.kind == "missing"] == [7]
    assert report.first_bad_entry == 7
    # The head of 30 entries now also covers more than the log holds.
    assert {"missing", "count", "root", "truncated"} == _kinds(report)
    assert "entry 7: entry 7 is missing (deleted) [missing]" in map(str, report.problems)


def test_detects_deleted_and_inserted_ranges(tamper):
    report = tamper.sql(
        ("DELETE FROM entries WHERE idx BETWEEN 4 AND 6",),
        ("INSERT INTO entries SELECT -1, data, leaf FROM entries WHERE idx = 9",),
    )
    assert [str(p) for p in report.problems if p.kind in ("missing", "invalid")] == [
        "entry 0: stored at index -1, outside the log (inserted) [invalid]",
        "entry 4: entries 4..6 are missing (deleted) [missing]",
    ]


def test_detects_reordered_entries(tamper):
    report = tamper.sql(
        ("UPDATE entries SET idx = -1 WHERE idx = 3",),
        ("UPDATE entries SET idx = 3 WHERE idx = 4",),
        ("UPDATE entries SET idx = 4 WHERE idx = -1",),
    )
    assert report.first_bad_entry == 3
    assert {p.entry for p in report.problems if p.kind == "moved"} == {3, 4}
    assert "root" in _kinds(report)


def test_detects_truncation(tamper):
    report = tamper.sql(("DELETE FROM entries WHERE idx >= 25",))
    truncated = [p for p in report.problems if p.kind == "truncated"]
    assert [(p.head, p.entry) for p in truncated] == [(2, 25)]
    assert report.first_bad_entry == 25 and _kinds(report) == {"truncated", "count"}


def test_detects_truncation_with_a_fixed_up_record(tamper):
    """Cutting entries and rewriting the log's own record of its size still leaves the head."""
    frontier = Frontier()
    for (leaf,) in tamper.rows("SELECT leaf FROM entries WHERE idx < 25 ORDER BY idx"):
        frontier.append(leaf)
    report = tamper.sql(
        ("DELETE FROM entries WHERE idx >= 25",),
        ("UPDATE meta SET value = 25 WHERE key = 'size'",),
        ("UPDATE meta SET value = ? WHERE key = 'frontier'", frontier.to_bytes()),
    )
    assert _kinds(report) == {"truncated"} and report.first_bad_entry == 25


def test_detects_a_swapped_signing_key(tamper):
    report = verify_log(tamper.path, public_key_pem(Ed25519PrivateKey.generate()))
    assert _kinds(report) == {"key", "signature"}
    assert {p.head for p in report.problems if p.kind == "signature"} == {0, 1, 2}
    # An intruder re-signs every head with a key of their own and records it as the log's key.
    intruder = Ed25519PrivateKey.generate()
    statements = [
        ("UPDATE meta SET value = ? WHERE key = 'key_fingerprint'", key_fingerprint(intruder))
    ]
    for seq, size, timestamp, root in tamper.rows(
        "SELECT seq, size, timestamp, root_hash FROM tree_heads"
    ):
        signature = intruder.sign(head_message("prison", size, timestamp, root))
        statements.append(("UPDATE tree_heads SET signature = ? WHERE seq = ?", signature, seq))
    report = tamper.sql(*statements)
    assert _kinds(report) == {"key", "signature"} and report.first_bad_entry is None


def test_detects_a_changed_key_record(tamper):
    report = tamper.sql(("UPDATE meta SET value = ? WHERE key = 'key_fingerprint'", "0" * 64))
    assert _kinds(report) == {"key"}
    assert str(report.problems[0]).startswith("log: the log declares signing key sha256:000")


def test_detects_forged_heads(tamper):
    report = tamper.sql(("UPDATE tree_heads SET root_hash = ? WHERE seq = 1", b"\x07" * 32))
    assert [(p.kind, p.head) for p in report.problems] == [("signature", 1)]
    report = tamper.sql(("DELETE FROM tree_heads WHERE seq = 0",))
    assert [str(p) for p in report.problems] == [
        "head 0: head 0 is missing [head-missing]",
        "head 1: its signature does not verify with the reviewer's key: forged, altered, or "
        "signed with another key [signature]",
    ]
    report = tamper.sql(
        ("INSERT INTO tree_heads VALUES (3, 40, 0, ?, ?)", b"\x07" * 32, b"\x00" * 64)
    )
    assert ("signature", 3) in [(p.kind, p.head) for p in report.problems]


def test_detects_history_rewritten_and_signed_again(tamper):
    """The key holder rewrites entry 12 and signs a new head over the result: the earlier heads
    no longer match, and the new one is not an append-only extension of them (a fork)."""
    (data,) = tamper.rows("SELECT data FROM entries WHERE idx = 12")[0]
    edited = data.replace('"declared":12', '"declared":2')
    leaves = [leaf for (leaf,) in tamper.rows("SELECT leaf FROM entries ORDER BY idx")]
    leaves[12] = leaf_hash(edited.encode())
    root = MerkleTree(leaves).root()
    signature = tamper.key.sign(head_message("prison", 30, 1, root))
    report = tamper.sql(
        ("UPDATE entries SET data = ?, leaf = ? WHERE idx = 12", edited, leaves[12]),
        ("INSERT INTO tree_heads VALUES (3, 30, 1, ?, ?)", root, signature),
    )
    assert sorted((p.kind, p.head) for p in report.problems if p.head is not None) == [
        ("inconsistent", 3),
        ("root", 1),
        ("root", 2),
    ]
    assert "signed after entries before 30 were rewritten" in str(report.problems[-1])


def test_detects_heads_going_backwards(tamper):
    smaller = tamper.key.sign(head_message("prison", 5, 2, b"\x00" * 32))
    report = tamper.sql(("INSERT INTO tree_heads VALUES (4, 5, 2, ?, ?)", b"\x00" * 32, smaller))
    assert sorted((p.kind, p.head) for p in report.problems) == [
        ("head-missing", 3),
        ("inconsistent", 4),
        ("root", 4),
    ]
    assert "covers fewer entries (5) than head 2 (30)" in str(report.problems[-1])


# -- durability ----------------------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from nodes.shared.audit.log import AuditLog, load_signing_key
log = AuditLog(Path(sys.argv[1]), load_signing_key(Path(sys.argv[2])), "prison", sign_every=7)
round_ = int(sys.argv[3])
n = 0
while True:
    index = log.append({"event": "elements_evaluated", "chunks": round_, "evaluated": n})
    if n % 5 == 0:
        log.sign_tree_head()
    print(index, round_, n, flush=True)
    n += 1
"""


def test_entries_survive_the_writer_being_killed(tmp_path, key):
    path, key_file = tmp_path / "log.sqlite", tmp_path / "audit-key.pem"
    committed: dict[int, tuple[int, int]] = {}
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(5):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(key_file), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        first = writer.stdout.readline()  # it runs: appends are happening
        assert first, "the writer did not start"
        threading.Event().wait(rng.uniform(0.02, 0.3))
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate()
        assert writer.returncode == -signal.SIGKILL
        for line in (first + rest).splitlines(keepends=True):
            if line.endswith("\n"):  # a complete report of a returned append
                index, r, n = map(int, line.split())
                committed[index] = (r, n)
    report = verify_log(path, public_key_pem(key))
    assert report.ok, report.problems
    assert report.heads > 0 and {r for r, _ in committed.values()} == set(range(5))
    db = sqlite3.connect(path)
    stored = {idx: json.loads(data) for idx, data in db.execute("SELECT idx, data FROM entries")}
    for index, (r, n) in committed.items():
        assert (stored[index]["chunks"], stored[index]["evaluated"]) == (r, n)
    assert sorted(stored) == list(range(report.entries))
