"""Replay, through public interfaces only, of the field-profile attack: a client granted only
``status`` holds every table file of the federation and tries to read more than status.

Everything is set up as an operator and two clients would: ``psi synth``, ``psi certs init``, a
node.toml and federation files written by hand, ``psi node build``, ``psi node serve`` and
``psi query`` as subprocesses. The attacker then works on bytes on disk with the constructions
docs/tables.md publishes (its cache rows, opened with its own cache.key, the table layout,
ChaCha20-Poly1305 from ``cryptography``), importing nothing of kinlink's: the property must hold
for whoever reads the files, not only for kinlink's own code.
"""

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NODE = "prison"
FULL, STATUS_ONLY = "civil-affairs", "education"
ENV = {**os.environ, "KINLINK_KEY_PASSPHRASE": "replay passphrase, not for production"}
# docs/tables.md: the label's field mask (byte 1): bit 0 start, 1 end, 2 grade, 3 kind, 4 handle.
FIELD_BITS = ("start", "end", "disability_grade", "disability_kind", "handle")


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "nodes.cli", *map(str, args)]


def psi(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


def grant(client: str, fields: list[str]) -> str:
    return (
        f'\n[[grants]]\nclient = "{client}"\ndatasets = ["{NODE}"]\npurposes = ["screening"]\n'
        f"fields = {json.dumps(fields)}\nper_session = 100000\nper_day = 100000\n"
        "per_epoch = 100000\n"
    )


NODE_TOML = (
    f"""[node]
id = "{NODE}"
listen = "127.0.0.1:0"
state = "state"
tls = {{ ca = "certs/ca.pem", cert = "certs/{NODE}.pem", key = "certs/{NODE}-key.pem" }}

[datasets.{NODE}]
title = "Persons serving a prison sentence"
csv = "data/{NODE}.csv"
statuses = ["imprisoned"]
legal_basis = "replay"
update_frequency = "P1M"
responsible_unit = "replay"
"""
    + grant(FULL, ["status", "start", "end", "handle"])
    + grant(STATUS_ONLY, ["status"])
)


def federation_toml(client: str, port: int) -> str:
    return (
        f'[client]\nid = "{client}"\ncache = "cache-{client}"\n'
        f'tls = {{ ca = "certs/ca.pem", cert = "certs/{client}.pem", '
        f'key = "certs/{client}-key.pem" }}\n\n[nodes.{NODE}]\naddress = "127.0.0.1:{port}"\n'
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay-profiles")
    for step in (
        ("synth", "--out", "data", "--children", "200", "--as-of", "2026-11-30", "--seed", "7"),
        ("certs", "init", "--out", "certs", "--nodes", NODE, "--clients", f"{FULL},{STATUS_ONLY}"),
    ):
        run = psi(*step, cwd=root)
        assert run.returncode == 0, run.stderr
    (root / "node.toml").write_text(NODE_TOML, encoding="utf-8")
    run = psi("node", "build", "--config", "node.toml", cwd=root)
    assert run.returncode == 0, run.stderr
    server = subprocess.Popen(
        command("node", "serve", "--config", "node.toml", "--port-file", "port"),
        cwd=root,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (root / "port").exists() or not (root / "port").read_text().strip():
            assert server.poll() is None and time.monotonic() < deadline, "node did not start"
            time.sleep(0.05)
        port = int((root / "port").read_text())
        for client in (FULL, STATUS_ONLY):
            (root / f"{client}.toml").write_text(federation_toml(client, port), encoding="utf-8")
        yield root
    finally:
        server.terminate()
        server.wait(timeout=15)


def query(root: Path, client: str) -> list[dict[str, str]]:
    """``psi query`` as ``client`` about every person in the register; the matches it wrote."""
    out = root / f"matches-{client}.csv"
    run = psi(
        "query", "--federation", f"{client}.toml", "--node", NODE, "--dataset", NODE,
        "--ids", f"data/{NODE}.csv", "--purpose", "screening", "--out", out, cwd=root,
    )  # fmt: skip
    assert run.returncode in (0, 1), run.stderr
    with open(out, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def cache_rows(path: Path, cache: Path) -> list[tuple[int, bytes]]:
    """A client's cached (tag, label key) pairs, opened with its own ``cache.key`` as
    docs/tables.md says: after a 6-byte magic and a u16 row width, AES-256-GCM segments of
    records of a 16-byte identifier key and the row, tag (u64 LE) then the 32-byte key."""
    data = path.read_bytes()
    width = int.from_bytes(data[6:8], "big")
    size = 16 + width
    context = "derived/" + path.parent.relative_to(cache).as_posix()
    key = HKDF(
        hashes.SHA256(), 32, salt=None, info=b"kinlink-at-rest-v1/cache/" + context.encode()
    ).derive((cache / "cache.key").read_bytes())
    body, start = b"", 8
    while start + 16 <= len(data):
        count, nonce = struct.unpack_from("<I12s", data, start)
        end = start + 16 + count * size + 16
        body += AESGCM(key).decrypt(
            nonce, data[start + 16 : end], data[:8] + data[start : start + 4]
        )
        start = end
    return [
        (int.from_bytes(body[i + 16 : i + 24], "little"), body[i + 24 : i + 56])
        for i in range(0, len(body), size)
    ]


def field_masks(table: Path, rows: list[tuple[int, bytes]]) -> list[int]:
    """The field masks of every label in ``table`` that the rows' keys open (docs/tables.md's
    file layout and sealing)."""
    data = table.read_bytes()
    length = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[12 : 12 + length])
    count, row = header["count"], header["label_size"] + 32
    align = lambda offset: -(-offset // 64) * 64  # noqa: E731
    tags_at = align(12 + length)
    written_at = align(tags_at + 8 * count)
    sealed_at = align(written_at + 4 * count)
    dataset = header["dataset"].encode()
    prefix = b"kinlink-label-v1" + struct.pack(">H", len(dataset)) + dataset
    prefix += struct.pack(">I", header["epoch"])
    entries: dict[int, list[int]] = {}
    for i in range(count):
        entries.setdefault(struct.unpack_from("<Q", data, tags_at + 8 * i)[0], []).append(i)
    masks = []
    for tag, key in rows:
        for i in entries.get(tag, []):
            written = struct.unpack_from("<I", data, written_at + 4 * i)[0]
            sealed = data[sealed_at + row * i : sealed_at + row * (i + 1)]
            try:
                plain = ChaCha20Poly1305(key).decrypt(
                    sealed[:12], sealed[12:], prefix + struct.pack(">I", written)
                )
            except InvalidTag:
                continue
            masks.append(plain[4 + 1])  # after the u32 length: format, then the field mask
    return masks


def fields(mask: int) -> set[str]:
    return {name for bit, name in enumerate(FIELD_BITS) if mask >> bit & 1}


def test_every_table_file_opens_only_status_for_a_status_only_client(world):
    assert any(row["start_date"] for row in query(world, FULL))
    mine = query(world, STATUS_ONLY)
    assert mine and not any(row["start_date"] or row["record_handle"] for row in mine)
    rows = [
        r
        for path in (world / f"cache-{STATUS_ONLY}").rglob("derived.bin")
        for r in cache_rows(path, world / f"cache-{STATUS_ONLY}")
    ]
    tables = sorted((world / "state").rglob("*.table"))
    tables += sorted((world / f"cache-{FULL}").rglob("table.kltb"))
    opened = {str(table.relative_to(world)): field_masks(table, rows) for table in tables}
    assert any(opened.values()), "its own profile's table must open"
    for name, masks in opened.items():
        assert all(not fields(mask) for mask in masks), f"{name} opened {fields(max(masks))}"


def test_a_swapped_table_copy_writes_no_more_fields(world):
    query(world, FULL)
    query(world, STATUS_ONLY)
    [full] = (world / f"cache-{FULL}").rglob("table.kltb")
    [own] = (world / f"cache-{STATUS_ONLY}").rglob("table.kltb")
    shutil.copyfile(full, own)
    rows = query(world, STATUS_ONLY)
    assert not any(r["start_date"] or r["end_date"] or r["record_handle"] for r in rows)
