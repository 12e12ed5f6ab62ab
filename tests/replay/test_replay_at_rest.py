"""The at-rest attacks replayed through public interfaces only: data and certificates from the
CLI, a node.toml written by hand, ``psi node build``/``serve``/``query`` as subprocesses under a
permissive umask, and the thief's and the vandal's work on the bytes on disk. The thief's code
follows docs/tables.md (layout, tags, label keys, ChaCha20-Poly1305), not kinlink's."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

PASSPHRASE = "replay passphrase"
NODE_TOML = """[node]
id = "prison"
listen = "127.0.0.1:0"
state = "state"
tls = {{ ca = "certs/ca.pem", cert = "certs/prison.pem", key = "certs/prison-key.pem" }}

[datasets.prison]
title = "Persons serving a prison sentence"
csv = "{register}"
statuses = ["imprisoned"]
legal_basis = "replay"
update_frequency = "P1M"
responsible_unit = "replay"

[[grants]]
client = "civil-affairs"
datasets = ["prison"]
purposes = ["screening"]
fields = ["status", "start", "end", "handle"]
per_session = 100000
per_day = 1000000
per_epoch = 10000000
"""
FEDERATION_TOML = """[client]
id = "civil-affairs"
cache = "{cache}"

[client.tls]
ca = "certs/ca.pem"
cert = "certs/civil-affairs.pem"
key = "certs/civil-affairs-key.pem"

[nodes.prison]
address = "127.0.0.1:{port}"
"""


def psi(root: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "KINLINK_KEY_PASSPHRASE": PASSPHRASE}
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),
    )


class Site:
    """A prison node serving from ``root`` and civil affairs' files beside it."""

    def __init__(self, root: Path):
        self.root = root
        self.state = root / "state"
        self.caches = 0

    def federation(self) -> Path:
        """A federation file with a cache of its own: each attack starts from a clean client."""
        self.caches += 1
        path = self.root / f"federation-{self.caches}.toml"
        path.write_text(FEDERATION_TOML.format(cache=f"cache-{self.caches}", port=self.port))
        return path

    def query(self, federation: Path) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
        out = self.root / "matches.csv"
        out.unlink(missing_ok=True)
        run = psi(
            self.root, "query", "--federation", federation, "--node", "prison",
            "--dataset", "prison", "--ids", "parents.csv", "--purpose", "screening",
            "--out", out,
        )  # fmt: skip
        rows = list(csv.reader(out.open())) if out.exists() else []
        return run, sorted(rows[1:])

    def table(self) -> Path:
        return max(self.state.glob("prison/e*/*/v*.table"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    assert psi(root, "synth", "--out", "data", "--children", "200", "--seed", "4").returncode == 0
    init = psi(root, "certs", "init", "--out", "certs", "--nodes", "prison",
               "--clients", "civil-affairs")  # fmt: skip
    assert init.returncode == 0, init.stderr
    (root / "node.toml").write_text(NODE_TOML.format(register=root / "data" / "prison.csv"))
    with open(root / "data" / "roster.csv", encoding="utf-8") as handle:
        parents = {r[k] for r in csv.DictReader(handle) for k in ("father_id", "mother_id")}
    (root / "parents.csv").write_text("id_number\n" + "\n".join(sorted(p for p in parents if p)))
    build = psi(root, "node", "build", "--config", "node.toml")
    assert build.returncode == 0, build.stderr
    env = {**os.environ, "KINLINK_KEY_PASSPHRASE": PASSPHRASE}
    command = ["node", "serve", "--config", "node.toml", "--port-file", "port"]
    server = subprocess.Popen(
        [sys.executable, "-m", "nodes.cli", *command],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    try:
        deadline = time.monotonic() + 120
        while not ((root / "port").exists() and (root / "port").read_text().strip()):
            if server.poll() is not None:
                pytest.fail(f"the node did not start: {server.stderr.read()}")
            assert time.monotonic() < deadline, "the node did not start in time"
            time.sleep(0.05)
        site = Site(root)
        site.port = int((root / "port").read_text())
        run, site.clean = site.query(site.federation())
        assert run.returncode == 0 and site.clean, run.stderr
        yield site
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()


# -- the thief, from docs/tables.md ------------------------------------------------------------


def parse_table(data: bytes) -> dict | None:
    """A table file's header, tags, written versions and sealed rows; any trailer ignored."""
    if data[:8] != b"KINLINKT":
        return None
    (length,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[12 : 12 + length])
    n, row = header["count"], header["label_size"] + 32
    align = lambda x: -(-x // 64) * 64  # noqa: E731
    tags_at = align(12 + length)
    written_at = align(tags_at + 8 * n)
    sealed_at = align(written_at + 4 * n)
    tags = {data[tags_at + 8 * i : tags_at + 8 * i + 8]: i for i in range(n)}
    written = [struct.unpack_from("<I", data, written_at + 4 * i)[0] for i in range(n)]
    rows = [data[sealed_at + row * i : sealed_at + row * (i + 1)] for i in range(n)]
    dataset = header["dataset"].encode()
    prefix = hashlib.sha512(
        b"kinlink-table-v1" + struct.pack(">H", len(dataset)) + dataset
        + struct.pack(">I", header["epoch"])
    )  # fmt: skip
    return {"header": header, "tags": tags, "written": written, "rows": rows, "prefix": prefix}


def opens(table: dict, tag: bytes, key: bytes) -> bool:
    index = table["tags"].get(tag)
    if index is None:
        return False
    h = table["header"]
    associated = (
        b"kinlink-label-v1"
        + struct.pack(">H", len(h["dataset"]))
        + h["dataset"].encode()
        + struct.pack(">II", h["epoch"], table["written"][index])
    )
    row = table["rows"][index]
    try:
        ChaCha20Poly1305(key).decrypt(row[:12], row[12:], associated)
    except InvalidTag:
        return False
    return True


def derived(table: dict, output: bytes) -> tuple[bytes, bytes]:
    """The tag and label key of an OPRF output: SHA-512 of a prefix of the table's, then it."""
    state = table["prefix"].copy()
    state.update(output)
    digest = state.digest()
    return digest[:8], digest[8:40]


def stolen_labels(folder: Path, width: int, skip: str = "") -> int:
    """Labels opened by reading every ``width`` bytes (8-byte aligned) of every file as an OPRF
    output (64) or a tag and label key (40), tried on every table in the folder."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != skip]
    tables = [t for t in (parse_table(p.read_bytes()) for p in files) if t]
    assert tables, "the thief has a table"
    opened = set()
    for path in files:
        data = path.read_bytes()
        for start in range(0, len(data) - width + 1, 8):
            window = data[start : start + width]
            for table in tables:
                tag, key = derived(table, window) if width == 64 else (window[:8], window[8:])
                if opens(table, tag, key):
                    opened.add(tag)
    return len(opened)


# -- the replays ---------------------------------------------------------------------------------


def test_the_state_folder_alone_opens_nothing(site):
    assert stolen_labels(site.state, 64) == 0


def test_the_client_cache_without_cache_key_opens_nothing(site):
    assert stolen_labels(site.root / "cache-1", 40, skip="cache.key") == 0


def test_every_file_is_owner_only(site):
    loose = [
        str(p)
        for folder in (site.state, site.root / "cache-1")
        for p in [folder, *folder.rglob("*")]
        if p.stat().st_mode & 0o077
    ]
    assert not loose
    assert (site.root / "matches.csv").stat().st_mode & 0o077 == 0


def flipped(path: Path, offset: int) -> bytes:
    data = path.read_bytes()
    damaged = bytearray(data)
    damaged[offset] ^= 0x01
    path.write_bytes(bytes(damaged))
    return data


def test_a_flipped_byte_in_the_client_copy_is_fetched_again(site):
    federation = site.federation()
    site.query(federation)
    copy = next((site.root / f"cache-{site.caches}").rglob("table.kltb"))
    for offset in (len(copy.read_bytes()) // 2, -60):  # a sealed row; near the end
        flipped(copy, offset)
        run, rows = site.query(federation)
        assert run.returncode == 0 and rows == site.clean, run.stderr


def test_a_flipped_byte_in_the_derived_keys_names_the_file(site):
    federation = site.federation()
    site.query(federation)
    keys = next((site.root / f"cache-{site.caches}").rglob("derived.bin"))
    flipped(keys, -30)
    run, rows = site.query(federation)
    assert run.returncode == 2 and "derived.bin" in run.stderr and "delete it" in run.stderr
    assert "Traceback" not in run.stderr
    keys.unlink()
    run, rows = site.query(federation)
    assert run.returncode == 0 and rows == site.clean


def test_a_flipped_byte_in_the_node_table_is_refused_then_rebuilt(site):
    table = site.table()
    original = flipped(table, len(table.read_bytes()) // 2)
    run, rows = site.query(site.federation())
    assert run.returncode != 0 and "damaged" in run.stderr and not rows
    build = psi(site.root, "node", "build", "--config", "node.toml")
    assert build.returncode == 0 and "published" in build.stdout, build.stderr
    run, rows = site.query(site.federation())
    assert run.returncode == 0
    assert [r[:-1] for r in rows] == [r[:-1] for r in site.clean]  # all but the table version
    newest = site.table()
    current = newest.read_bytes()
    table.write_bytes(original)
    newest.write_bytes(original)  # the older version, its own MAC intact, as the current one
    run, rows = site.query(site.federation())
    newest.write_bytes(current)
    assert run.returncode != 0 and "damaged" in run.stderr and not rows


def test_a_flipped_output_stops_the_build(site):
    outputs = next(site.state.rglob("outputs.bin"))
    versions = sorted(site.state.rglob("v*.table"))
    original = flipped(outputs, -30)
    build = psi(site.root, "node", "build", "--config", "node.toml")
    assert build.returncode == 2 and "outputs.bin" in build.stderr, build.stdout
    assert "Traceback" not in build.stderr
    assert sorted(site.state.rglob("v*.table")) == versions
    outputs.write_bytes(original)
