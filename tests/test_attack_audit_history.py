"""Attacks on a node's audit history by root on the node (issue 14, item 3).

The attacker holds the node's state folder and, being root on a running node, its passphrase: it
removes three refusals from the log, renumbers the rest and re-signs every tree head. The log then
verifies on its own; what betrays it is the heads the client kept from its receipts (Certificate
Transparency's gossip, RFC 9162 section 8.1.4), checked against the node's log file and against
the node itself by consistency proofs. A thief with the folder alone cannot sign at all, and a
reviewer who pinned the key's fingerprint refuses a log re-signed under a new key.
"""

import json
import re
import sqlite3
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.client.client import Client, NodeError
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import generate_city, write_city
from nodes.shared.audit.log import AuditLog, key_fingerprint, public_key_pem
from nodes.shared.config import load_federation

NODE = "prison"
REFUSALS = 3


def psi(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def stolen_key(state: Path, passphrase: str) -> Ed25519PrivateKey:
    """The node's signing key as root on the node gets it: from the folder and the passphrase."""
    legacy = state / "audit-key.pem"
    if legacy.exists():  # before issue 14: in clear beside the log
        key = serialization.load_pem_private_key(legacy.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key
    from nodes.shared.audit.signing import PassphraseSeal, open_signing_key

    return open_signing_key(state, PassphraseSeal(passphrase.encode()))


def rewrite(log: Path, key: Ed25519PrivateKey, owner: str, drop) -> list[int]:
    """Rewrite ``log`` without the entries ``drop`` selects, each kept entry at its original time,
    a head re-signed after every receipt as the node signs them; returns the dropped indices."""
    with sqlite3.connect(log) as db:
        entries = [json.loads(d) for (d,) in db.execute("SELECT data FROM entries ORDER BY idx")]
    dropped = [e["index"] for e in entries if drop(e)]
    fresh = log.with_name("rewritten.sqlite")
    now = [datetime.fromisoformat(entries[0]["time"])]
    with AuditLog(fresh, key, owner, clock=lambda: now[0], sign_every=10**9) as forged:
        for entry in entries:
            if entry["index"] in dropped:
                continue
            now[0] = datetime.fromisoformat(entry.pop("time"))
            del entry["index"]
            forged.append(entry)
            if entry["event"] == "receipt_issued":
                forged.sign_tree_head()
        forged.sign_tree_head()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log}{suffix}").unlink(missing_ok=True)
    fresh.rename(log)
    return dropped


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    city = generate_city(children=60, as_of=date(2026, 11, 30), seed=14)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    ids = sorted({city.canonical(r.father_id) for r in city.roster} - {None})
    with LocalFederation(tmp_path_factory.mktemp("fed"), {NODE: paths[NODE]}) as fed:
        fed.setup()
        fed.build()
        fed.start()
        with Client(load_federation(fed.federation_file)) as client:
            client.query(NODE, NODE, ids[:10], purpose="screening")
            for n in range(REFUSALS):  # fresh identifiers, so each opens a session
                with pytest.raises(NodeError, match="PERMISSION_DENIED"):
                    client.query(NODE, NODE, ids[10 + n : 11 + n], purpose="research")
            client.query(NODE, NODE, ids[20:30], purpose="screening")
            client.query(NODE, NODE, ids[30:40], purpose="screening")
        yield fed


def test_a_rewritten_and_resigned_history_is_found_and_located(world):
    state = world.root / NODE / "state"
    node_log, client_log = state / "audit.sqlite", world.root / "client-cache" / "audit.sqlite"
    world.stop()
    key = stolen_key(state, world.passphrase)
    dropped = rewrite(node_log, key, NODE, lambda e: e["event"] == "session_refused")
    assert len(dropped) == REFUSALS

    # The premise: the rewritten log verifies on its own, and the receipts still agree.
    verified = psi("audit", "verify", node_log, "--key", state / "audit-key.pub.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The heads the client kept show the history was rewritten, and where.
    offline = psi("audit", "cross-check", client_log, node_log)
    assert offline.returncode == 1, offline.stdout
    assert "rewritten" in offline.stdout and "Traceback" not in offline.stderr
    first, last = map(int, re.search(r"entries (\d+)\.\.(\d+)", offline.stdout).groups())
    assert first <= dropped[0] and dropped[-1] <= last  # located: the refusals lie in it

    # So does the node itself, asked for consistency proofs to its current head.
    world.start()
    online = psi(
        "audit", "cross-check", client_log, node_log, "--federation", world.federation_file
    )
    assert online.returncode == 1, online.stdout + online.stderr
    assert "no consistency proof" in online.stdout


def test_the_state_folder_alone_holds_no_signing_key(world):
    state = world.root / NODE / "state"
    client = world.root / "client-cache"
    for folder in (state, client):
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            for load in (serialization.load_pem_private_key, serialization.load_der_private_key):
                try:
                    load(data, password=None)
                except (ValueError, TypeError):
                    continue
                pytest.fail(f"{path.name} opens as a private key without any secret")


def test_a_reviewer_who_pinned_the_fingerprint_refuses_a_log_resigned_with_a_new_key(
    world, tmp_path
):
    state = world.root / NODE / "state"
    pinned = key_fingerprint(
        serialization.load_pem_public_key((state / "audit-key.pub.pem").read_bytes())
    )
    log = tmp_path / "audit.sqlite"
    with sqlite3.connect(state / "audit.sqlite") as source, sqlite3.connect(log) as copy:
        source.backup(copy)
    forger = Ed25519PrivateKey.generate()
    rewrite(log, forger, NODE, lambda e: False)
    forged_pub = tmp_path / "audit-key.pub.pem"
    forged_pub.write_bytes(public_key_pem(forger))
    assert psi("audit", "verify", log, "--key", forged_pub).returncode == 0  # the premise
    pinned_check = psi("audit", "verify", log, "--key", forged_pub, "--fingerprint", pinned)
    assert pinned_check.returncode == 1, pinned_check.stdout + pinned_check.stderr
    assert "pinned" in pinned_check.stdout

    # The client's receipts were signed by the pinned key: cross-check says the log's is another.
    check = psi("audit", "cross-check", world.root / "client-cache" / "audit.sqlite", log)
    assert check.returncode == 1 and "another key" in check.stdout, check.stdout
    assert CLIENT in check.stdout


def test_a_sealed_key_opens_only_with_its_secret_and_a_clear_one_is_sealed(tmp_path):
    from nodes.shared.audit.log import generate_key
    from nodes.shared.audit.signing import PassphraseSeal, SecretSeal, open_signing_key
    from psi.errors import InputError

    node, client = tmp_path / "node", tmp_path / "client"
    legacy = generate_key(node / "audit-key.pem")  # as an earlier version left it
    assert key_fingerprint(open_signing_key(node, PassphraseSeal(b"right"))) == key_fingerprint(
        legacy
    )
    assert not (node / "audit-key.pem").exists() and (node / "audit-key.sealed").exists()
    with pytest.raises(InputError, match=r"audit-key\.sealed: cannot open the audit signing key"):
        open_signing_key(node, PassphraseSeal(b"wrong"))

    key = open_signing_key(client, SecretSeal(b"\1" * 32))
    assert key_fingerprint(open_signing_key(client, SecretSeal(b"\1" * 32))) == key_fingerprint(key)
    with pytest.raises(InputError, match=r"another cache\.key or a damaged file"):
        open_signing_key(client, SecretSeal(b"\2" * 32))
    sealed = client / "audit-key.sealed"
    sealed.write_bytes(sealed.read_bytes()[:-1] + bytes([sealed.read_bytes()[-1] ^ 1]))
    with pytest.raises(InputError, match="damaged"):
        open_signing_key(client, SecretSeal(b"\1" * 32))
