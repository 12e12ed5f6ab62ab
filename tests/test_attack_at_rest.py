"""Attacks on what a node and a client keep on disk: a thief with the state folder (no passphrase)
or the client's cache (no ``cache.key``) opens no label; one flipped byte in any stored artefact
is a clear error or a fresh fetch, never a smaller result; every file is owner-only."""

from __future__ import annotations

import csv
import os
import stat
from datetime import date
from itertools import count
from pathlib import Path

import numpy as np
import pytest

from nodes.client.client import Client, NodeError
from nodes.client.screening import screen
from nodes.client.screening.classify import CLASSES, NOT_ELIGIBLE
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.department.build import server_key
from nodes.department.state import NodeState
from nodes.shared.config import load_federation, load_node_config
from psi.errors import InputError
from psi.table import KEY_BYTES, TAG_BYTES, Table, derive, match, match_tags

_clients = count()


AS_OF = date(2026, 11, 30)
REGISTERS = ("prison", "police")


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    city = generate_city(children=200, as_of=AS_OF, seed=5)
    return city, write_city(city, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def prison(city, tmp_path_factory):
    """The prison node the attacks aim at, and police's (so that a screening has candidates),
    built and serving, every file written under a permissive umask."""
    city, paths = city
    previous = os.umask(0o022)
    try:
        with LocalFederation(
            tmp_path_factory.mktemp("fed"), {d: paths[d] for d in REGISTERS}
        ) as fed:
            fed.setup()
            fed.build()
            fed.start()
            yield fed, sorted(expected_matches(city)["prison"])
    finally:
        os.umask(previous)


def client(fed: LocalFederation) -> Client:
    """Civil affairs with a cache of its own (each attack starts from a clean client)."""
    path = fed.root / f"federation-{next(_clients)}.toml"
    text = fed.federation_toml(CLIENT).replace('"client-cache"', f'"cache-{path.stem}"')
    path.write_text(text, encoding="utf-8")
    return Client(load_federation(path))


def state(fed: LocalFederation) -> NodeState:
    return NodeState(load_node_config(fed.config_file("prison")), fed.passphrase.encode())


def latest_table(fed: LocalFederation) -> Path:
    return max((fed.root / "prison" / "state" / "prison").glob("e*/*/v*.table"))


def sealed_row(fed: LocalFederation, identifier: str, data: bytes, where: str) -> int:
    """The offset in table bytes of ``identifier``'s entry: the low byte of its tag, or a byte
    inside its sealed label (the test holds the passphrase, to aim; the attack does not)."""
    node = state(fed)
    ring = node.keyring()
    epoch, _ = ring.current("prison")
    [fields] = node.registry.profiles(node.config, "prison")
    output = node.oprf.evaluate_batch(
        server_key(node.oprf, ring, "prison", epoch, fields).sk, [identifier.encode()]
    )
    tags, _ = derive("prison", epoch, output)
    table = readable_table(data)
    assert table is not None
    index = int(np.searchsorted(table.tags, tags[0]))
    if where == "tag":
        return data.find(table.tags[index : index + 1].tobytes())
    return data.find(table.sealed[index].tobytes()) + 20


def flip(path: Path, offset: int) -> bytes:
    """Flip one bit of the byte at ``offset`` (negative: from the end); returns the original."""
    data = path.read_bytes()
    damaged = bytearray(data)
    damaged[offset] ^= 0x01
    path.write_bytes(bytes(damaged))
    return data


def readable_table(data: bytes) -> Table | None:
    """What a thief makes of table bytes: the table, whatever trailer follows it."""
    for cut in range(0, 129):
        try:
            return Table.from_bytes(data[: len(data) - cut])
        except InputError:
            continue
    return None


def windows(data: bytes, width: int) -> np.ndarray:
    """Every ``width``-byte window of ``data`` at an 8-byte aligned offset: any record layout."""
    starts = range(0, len(data) - width + 1, 8)
    return np.array([np.frombuffer(data, np.uint8, width, s) for s in starts], np.uint8).reshape(
        -1, width
    )


def files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_the_state_folder_alone_opens_no_label(prison):
    """The thief reads every 64 bytes of every file as an OPRF output and tries it on every
    published table: before, outputs.bin in clear opened every member's label."""
    fed, _ = prison
    folder = fed.root / "prison" / "state"
    tables = [t for t in map(readable_table, (p.read_bytes() for p in files(folder))) if t]
    assert tables, "the thief has the published tables"
    opened = set()
    for path in files(folder):
        candidates = windows(path.read_bytes(), 64)
        for t in tables if len(candidates) else ():
            opened |= {m.label for m in match(t, candidates).matches}
    entries = len(tables[0])
    assert not opened, f"{len(opened)} of {entries} labels opened from the state folder alone"


def test_the_client_cache_without_its_secret_opens_no_label(prison):
    """The thief takes civil affairs' cache but not ``cache.key``: every 40 bytes of every file
    read as a table tag and label key, tried on the table copies beside them."""
    fed, matched = prison
    with client(fed) as civil:
        result = civil.query("prison", "prison", matched, purpose="screening")
        assert len(result.matches) == len(matched)
        folder = civil.config.cache
    stolen = [p for p in files(folder) if p.name != "cache.key"]
    tables = [t for t in map(readable_table, (p.read_bytes() for p in stolen)) if t]
    assert tables, "the thief has the table copy"
    opened = set()
    for path in stolen:
        rows = windows(path.read_bytes(), TAG_BYTES + KEY_BYTES)
        tags = np.ascontiguousarray(rows[:, :TAG_BYTES]).view("<u8").reshape(-1)
        for t in tables if len(rows) else ():
            found = match_tags(t, tags, np.ascontiguousarray(rows[:, TAG_BYTES:])).matches
            opened |= {m.label for m in found}
    assert not opened, f"{len(opened)} of {len(matched)} labels opened without cache.key"


@pytest.mark.parametrize("where", ["sealed", "tag"])
def test_a_flipped_byte_in_the_node_table_is_refused_not_a_smaller_result(prison, where):
    fed, matched = prison
    path = latest_table(fed)
    original = flip(path, sealed_row(fed, matched[0], path.read_bytes(), where))
    try:
        with client(fed) as civil:
            try:
                result = civil.query("prison", "prison", matched, purpose="screening")
            except NodeError as error:
                assert "damaged" in str(error)
            else:
                found = len(result.matches)
                assert found == len(matched), f"{found} of {len(matched)} matches, no error"
    finally:
        path.write_bytes(original)


def test_a_damaged_table_copy_is_fetched_again(prison):
    fed, matched = prison
    with client(fed) as civil:
        civil.query("prison", "prison", matched, purpose="screening")
        copy = next(civil.config.cache.rglob("table.kltb"))
    flip(copy, sealed_row(fed, matched[0], copy.read_bytes(), "sealed"))
    with client_again(civil) as civil:
        found = len(civil.query("prison", "prison", matched, purpose="screening").matches)
    assert found == len(matched), f"{found} of {len(matched)} matches from a damaged copy"


def client_again(civil: Client) -> Client:
    return Client(civil.config)


def test_a_damaged_derived_key_file_is_a_clear_error(prison):
    fed, matched = prison
    with client(fed) as civil:
        civil.query("prison", "prison", matched, purpose="screening")
        derived = next(civil.config.cache.rglob("derived.bin"))
    flip(derived, -30)
    with client_again(civil) as civil:
        try:
            found = len(civil.query("prison", "prison", matched, purpose="screening").matches)
        except InputError as error:
            assert str(derived) in str(error) and "delete" in str(error)
        else:
            assert found == len(matched), f"{found} of {len(matched)} matches, no error"


def test_a_flipped_output_is_an_error_at_build_not_a_silent_new_version(prison):
    fed, _ = prison
    outputs = next((fed.root / "prison" / "state").rglob("outputs.bin"))
    original = flip(outputs, -30)
    try:
        try:
            [report] = state(fed).build("prison")
        except InputError as error:
            assert str(outputs) in str(error) and "psi node build" in str(error)
        else:
            assert not report.published, (
                f"version {report.version} published: +{report.added} -{report.removed}"
            )
    finally:
        outputs.write_bytes(original)


def test_every_file_is_owner_only_whatever_the_umask(prison, tmp_path):
    fed, matched = prison
    with client(fed) as civil:
        civil.query("prison", "prison", matched, purpose="screening")
        cache = civil.config.cache
    open_to_others = [
        f"{p} {stat.filemode(p.stat().st_mode)}"
        for folder in (fed.root / "prison" / "state", cache)
        for p in [folder, *folder.rglob("*")]
        if p.stat().st_mode & 0o077
    ]
    assert not open_to_others, "\n".join(open_to_others)


def test_a_damaged_table_is_rebuilt_by_psi_node_build(prison):
    """The operator's remedy, as the error says: build again (the replay runs `psi node build`).
    A new version is published in full, a client holding the damaged version gets the whole
    table, and the old version put back in place of the new one (a rollback) is refused."""
    fed, matched = prison
    holder = client(fed)
    holder.query("prison", "prison", matched, purpose="screening")  # holds the current version
    damaged = latest_table(fed)
    original = flip(damaged, -100)
    [report] = state(fed).build("prison")  # what `psi node build` does
    current = latest_table(fed)
    assert report.published and current != damaged
    with holder, client(fed) as fresh:
        for civil in (holder, fresh):
            found = len(civil.query("prison", "prison", matched, purpose="screening").matches)
            assert found == len(matched)
    published = current.read_bytes()
    damaged.write_bytes(original)
    current.write_bytes(original)  # yesterday's table, its own MAC intact, in today's place
    try:
        with client(fed) as civil, pytest.raises(NodeError, match=r"DATA_LOSS.*damaged"):
            civil.query("prison", "prison", matched, purpose="screening")
    finally:
        current.write_bytes(published)


def classes(out: Path) -> dict[str, str]:
    with open(out / "results.csv", encoding="utf-8", newline="") as handle:
        return {row["child_id"]: row["classification"] for row in csv.DictReader(handle)}


def test_a_rewritten_screening_memo_changes_no_class(prison, city, tmp_path):
    """The vandal rewrites the memo a rerun reuses classes from (a valid file saying every child
    is not eligible): before, the rerun reported every orphan as not eligible."""
    fed, _ = prison
    _, paths = city
    first = screen(fed.federation_file, paths["roster"], AS_OF, tmp_path / "first")
    [memo] = (fed.root / "client-cache" / "screening").glob("*.npz")
    try:
        with np.load(memo, allow_pickle=False) as data:
            arrays = dict(data)
    except (ValueError, OSError):  # sealed: nothing to rewrite but bytes
        flip(memo, -5)
    else:
        arrays["classes"][:] = CLASSES.index(NOT_ELIGIBLE)
        with open(memo, "wb") as handle:
            np.savez(handle, **arrays)
    try:
        screen(fed.federation_file, paths["roster"], AS_OF, tmp_path / "again")
    except InputError as error:
        assert str(memo) in str(error) and "delete it" in str(error)
        memo.unlink()
        screen(fed.federation_file, paths["roster"], AS_OF, tmp_path / "again")
    again = classes(tmp_path / "again")
    lost = sum(again[c] != k for c, k in classes(first.out_dir).items())
    assert not lost, f"{lost} children reported in a forged class"
