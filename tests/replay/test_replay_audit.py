"""Replays the audit attacks of issue 14 (items 3 and 4) through public interfaces only: the `psi`
command line in subprocesses, configuration files, and bytes on disk read and written with
sqlite3, hashlib and `cryptography` from the documented formats (docs/reviewer-guide.md, "For an
independent verifier"; psi/keys.py's sealed format). Nothing of kinlink is imported: the attacker
and the checks here are written from the documentation, not from the code they check.
"""

import csv
import hashlib
import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

PASSPHRASE = "replay passphrase"
NODE, CLIENT = "prison", "civil-affairs"
HEAD_CONTEXT = b"kinlink audit tree head v1\x00"


def psi(*args: object, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "KINLINK_KEY_PASSPHRASE": PASSPHRASE}
    done = subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done


# -- the documented formats, written independently --------------------------------------------


def leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.1."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def frontier(leaves: list[bytes]) -> bytes:
    """The roots of the complete subtrees covering the leaves, left to right."""
    out, start = b"", 0
    for bit in reversed(range(len(leaves).bit_length())):
        if len(leaves) >> bit & 1:
            out += mth(leaves[start : start + (1 << bit)])
            start += 1 << bit
    return out


def head_message(owner: str, size: int, stamp: int, root: bytes) -> bytes:
    name = owner.encode()
    return HEAD_CONTEXT + bytes([len(name)]) + name + struct.pack(">QQ", size, stamp) + root


def unseal_key(blob: bytes) -> Ed25519PrivateKey:
    """psi/keys.py's sealed format: magic, format, log2(n), r, p, salt, nonce, ciphertext."""
    header = struct.Struct("<8sBBBB16s12s")
    _, _, log2_n, r, p, salt, nonce = header.unpack(blob[: header.size])
    key = Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(PASSPHRASE.encode())
    raw = AESGCM(key).decrypt(nonce, blob[header.size :], blob[: header.size])
    return Ed25519PrivateKey.from_private_bytes(raw)


def rewrite(log: Path, key: Ed25519PrivateKey, drop) -> list[int]:
    """Remove the entries ``drop`` selects, renumber, and re-sign every head at its new size."""
    with sqlite3.connect(log) as db:
        owner = db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()[0]
        entries = [json.loads(d) for (d,) in db.execute("SELECT data FROM entries ORDER BY idx")]
        heads = db.execute("SELECT size, timestamp FROM tree_heads ORDER BY seq").fetchall()
        dropped = [e["index"] for e in entries if drop(e)]
        kept = [e for e in entries if e["index"] not in dropped]
        rows = []
        for index, entry in enumerate(kept):
            data = json.dumps(
                {**entry, "index": index}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            rows.append((index, data, leaf(data.encode())))
        leaves = [r[2] for r in rows]
        db.execute("DELETE FROM entries")
        db.executemany("INSERT INTO entries VALUES (?, ?, ?)", rows)
        db.execute("DELETE FROM tree_heads")
        sizes = [(size - sum(1 for i in dropped if i < size), stamp) for size, stamp in heads]
        if not sizes or sizes[-1][0] < len(rows):  # and one over the whole log, as at a close
            sizes.append((len(rows), int(time.time() * 1000)))
        for seq, (size, stamp) in enumerate(sizes):
            root = mth(leaves[:size])
            db.execute(
                "INSERT INTO tree_heads VALUES (?, ?, ?, ?, ?)",
                (seq, size, stamp, root, key.sign(head_message(owner, size, stamp, root))),
            )
        fingerprint = hashlib.sha256(
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        ).hexdigest()
        db.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(len(rows), "size"), (frontier(leaves), "frontier"), (fingerprint, "key_fingerprint")],
        )
    return dropped


# -- a federation of one node, set up as an operator and an officer would ----------------------


class Node:
    def __init__(self, root: Path):
        self.root, self.process = root, None

    def start(self) -> None:
        port_file = self.root / NODE / "port"
        port_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", "node", "serve", "--config", "node.toml",
             "--port-file", port_file],
            cwd=self.root / NODE,
            env={**os.environ, "KINLINK_KEY_PASSPHRASE": PASSPHRASE},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.process.poll() is None and time.monotonic() < deadline, "node did not start"
            time.sleep(0.05)
        (self.root / "federation.toml").write_text(
            f'[client]\nid = "{CLIENT}"\ncache = "cache"\n'
            f'tls = {{ ca = "certs/ca.pem", cert = "certs/{CLIENT}.pem", '
            f'key = "certs/{CLIENT}-key.pem" }}\n'
            f'\n[nodes.{NODE}]\naddress = "127.0.0.1:{port_file.read_text().strip()}"\n'
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    psi("synth", "--out", "data", "--children", "60", "--as-of", "2026-11-30", cwd=root, check=True)
    psi(
        "certs",
        "init",
        "--out",
        "certs",
        "--nodes",
        NODE,
        "--clients",
        CLIENT,
        cwd=root,
        check=True,
    )
    (root / NODE).mkdir()
    (root / NODE / "node.toml").write_text(
        f'[node]\nid = "{NODE}"\nlisten = "127.0.0.1:0"\nstate = "state"\n'
        f'tls = {{ ca = "../certs/ca.pem", cert = "../certs/{NODE}.pem", '
        f'key = "../certs/{NODE}-key.pem" }}\n\n'
        f'[datasets.{NODE}]\ntitle = "prison register"\ncsv = "../data/{NODE}.csv"\n'
        'statuses = ["imprisoned"]\nlegal_basis = "notice on orphans and unattended children"\n'
        'update_frequency = "P1M"\nresponsible_unit = "prison data office"\n\n'
        f'[[grants]]\nclient = "{CLIENT}"\ndatasets = ["{NODE}"]\n'
        'purposes = ["screening", "verification"]\nfields = ["status"]\n'
        "per_session = 1000\nper_day = 5000\nper_epoch = 50000\n"
    )
    psi("node", "build", "--config", "node.toml", cwd=root / NODE, check=True)
    with open(root / "data" / "roster.csv", encoding="utf-8") as handle:
        parents = [row["father_id"] for row in csv.DictReader(handle) if row["father_id"]]
    for name, ids in (("a", parents[:10]), ("b", parents[10:20]), ("c", parents[20:30])):
        (root / f"{name}.csv").write_text("id_number\n" + "\n".join(ids) + "\n")
    for n in range(3):
        (root / f"refused{n}.csv").write_text(f"id_number\n{parents[30 + n]}\n")
    node = Node(root)
    node.start()
    try:
        yield root, node
    finally:
        node.stop()


def query(root: Path, ids: str, purpose: str) -> subprocess.CompletedProcess:
    return psi(
        "query", "--federation", "federation.toml", "--node", NODE, "--dataset", NODE,
        "--ids", ids, "--purpose", purpose, "--out", "matches.csv", cwd=root,
    )  # fmt: skip


def entries(log: Path) -> list[dict]:
    with sqlite3.connect(log) as db:
        return [json.loads(d) for (d,) in db.execute("SELECT data FROM entries ORDER BY idx")]


def test_replay_requery_from_cache_is_logged_and_every_command_signed(world):
    root, _ = world
    assert query(root, "a.csv", "screening").returncode in (0, 1)
    assert query(root, "a.csv", "verification").returncode in (0, 1)  # the cache answers
    log = root / "cache" / "audit.sqlite"
    lookups = [e for e in entries(log) if e["event"] == "lookup"]
    assert [(e["purpose"], e["answered_by"], e["cached"]) for e in lookups] == [
        ("screening", "node", 0),
        ("verification", "cache", 10),
    ]
    with sqlite3.connect(log) as db:
        size = db.execute("SELECT value FROM meta WHERE key = 'size'").fetchone()[0]
        signed = db.execute("SELECT MAX(size) FROM tree_heads").fetchone()[0]
    assert signed == size  # the command ended under a head
    done = psi("audit", "verify", log, "--key", root / "cache" / "audit-key.pub.pem", cwd=root)
    assert done.returncode == 0 and done.stdout.splitlines()[-1].startswith("verified")
    report = psi("audit", "report", log, "--key", root / "cache" / "audit-key.pub.pem", cwd=root)
    assert "verification: verified" in report.stdout and "from the cache" in report.stdout


def test_replay_no_signing_key_in_clear(world):
    root, _ = world
    for folder in (root / NODE / "state", root / "cache"):
        for path in folder.rglob("*"):
            assert not path.is_file() or b"PRIVATE KEY" not in path.read_bytes(), path


def test_replay_rewritten_history_and_new_key(world, tmp_path):
    root, node = world
    state = root / NODE / "state"
    assert query(root, "b.csv", "screening").returncode in (0, 1)
    for n in range(3):
        assert query(root, f"refused{n}.csv", "research").returncode == 3
    assert query(root, "c.csv", "screening").returncode in (0, 1)
    node.stop()
    pinned = hashlib.sha256(
        serialization.load_pem_public_key((state / "audit-key.pub.pem").read_bytes()).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    ).hexdigest()

    # Root on the node, with the passphrase, removes the refusals and re-signs with the node's key.
    log = state / "audit.sqlite"
    dropped = rewrite(log, unseal_key((state / "audit-key.sealed").read_bytes()), lambda e: (
        e["event"] == "session_refused"
    ))  # fmt: skip
    assert len(dropped) == 3
    verified = psi("audit", "verify", log, "--key", state / "audit-key.pub.pem", cwd=root)
    assert verified.returncode == 0, verified.stdout  # the log alone proves nothing
    client_log = root / "cache" / "audit.sqlite"
    offline = psi("audit", "cross-check", client_log, log, cwd=root)
    assert offline.returncode == 1, offline.stdout
    assert "[rewritten]" in offline.stdout or "[cut-off]" in offline.stdout
    first, last = map(int, re.search(r"entries (\d+)\.\.(\d+)", offline.stdout).groups())
    assert first <= dropped[0] and dropped[-1] <= last
    node.start()
    online = psi(
        "audit", "cross-check", client_log, log, "--federation", "federation.toml", cwd=root
    )
    assert online.returncode == 1 and "current head" in online.stdout, online.stdout

    # A thief re-signs a copy under a key of its own: the pinned fingerprint refuses it.
    copy = tmp_path / "copy.sqlite"
    with sqlite3.connect(log) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    forger = Ed25519PrivateKey.generate()
    rewrite(copy, forger, lambda e: False)
    forged_pub = tmp_path / "forged.pub.pem"
    forged_pub.write_bytes(
        forger.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert psi("audit", "verify", copy, "--key", forged_pub, cwd=root).returncode == 0
    refused = psi("audit", "verify", copy, "--key", forged_pub, "--fingerprint", pinned, cwd=root)
    assert refused.returncode == 1 and "pinned" in refused.stdout
    crossed = psi("audit", "cross-check", client_log, copy, cwd=root)
    assert crossed.returncode == 1 and "[key]" in crossed.stdout
