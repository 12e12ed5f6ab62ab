"""Attacks on what an officer's script or file can make the client do wrongly: identifiers spelt
as real files spell them that would silently never match (a child left unfound), a message that
echoes an identity number, and a node or client of another federation whose refusal reads as
"Socket closed" instead of saying which side's CA is wrong."""

import csv
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from nodes.client.client import Client, NodeError
from nodes.client.statistics import StatsClient
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.shared.certs import init_federation
from nodes.shared.config import STATISTICS_PURPOSE, StatisticsPolicy, load_federation
from psi.errors import InputError
from psi.stats import CARDINALITY


@pytest.fixture(scope="module")
def prison(tmp_path_factory):
    city = generate_city(children=300, as_of=date(2026, 11, 30), seed=8, messy=0.5)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    policy = StatisticsPolicy((CARDINALITY,), (STATISTICS_PURPOSE,), min_elements=10)
    with LocalFederation(
        tmp_path_factory.mktemp("fed"), {"prison": paths["prison"]}, statistics={"prison": policy}
    ) as fed:
        fed.setup()
        fed.build()
        fed.start()
        yield fed, sorted(expected_matches(city)["prison"]), city.parents_as_written()


def test_variant_spellings_are_never_silently_missed(prison):
    """The script hands raw cells, as a spreadsheet holds them: 15-digit, lower-case x,
    full-width, spaced. Each must match as its canonical form does."""
    fed, matched, written = prison
    variants = [x for x, c in written.items() if c in set(matched)]
    assert sum(x != written[x] for x in variants) > len(variants) // 3
    with Client(load_federation(fed.federation_file)) as client:
        result = client.query("prison", "prison", variants, purpose="screening")
        counted = StatsClient(client).run("prison", "prison", variants, purpose=STATISTICS_PURPOSE)
    assert sorted({x for x, _ in result.matches}) == matched
    assert counted.intersection == len(matched)


def test_an_invalid_identifier_is_refused_not_sent_and_never_echoed(prison):
    fed, matched, _ = prison
    bad = "150102198008254549"  # a check character off by one
    with Client(load_federation(fed.federation_file)) as client:
        for ask in (
            lambda: client.query("prison", "prison", [*matched, bad], purpose="screening"),
            lambda: StatsClient(client).run(
                "prison", "prison", [*matched, bad], purpose=STATISTICS_PURPOSE
            ),
        ):
            with pytest.raises(InputError) as raised:
                ask()
            assert "1 of" in str(raised.value) and bad[:10] not in str(raised.value)


def _federation_with(fed, tmp_path: Path, *, ca: Path, cert: Path, key: Path) -> Path:
    path = tmp_path / "federation.toml"
    text = fed.federation_toml().replace("client-cache", str(tmp_path / "cache"))
    for old, new in (
        ("certs/ca.pem", ca),
        (f"certs/{CLIENT}.pem", cert),
        (f"certs/{CLIENT}-key.pem", key),
    ):
        text = text.replace(f'"{old}"', f'"{new}"')
    path.write_text(text, encoding="utf-8")
    return path


def _failure(federation: Path) -> str:
    with Client(load_federation(federation)) as client, pytest.raises(NodeError) as raised:
        client.catalogue("prison")
    return str(raised.value)


def test_a_client_of_another_federation_is_refused_and_told_whose_ca(prison, tmp_path):
    """A client certificate from another CA: the node closes the handshake. The client must say
    that the node does not trust its certificate, not just "Socket closed"."""
    fed, _, _ = prison
    other = tmp_path / "other"
    init_federation(other, ["prison"], [CLIENT], force=True)
    mine = fed.certs
    message = _failure(
        _federation_with(
            fed,
            tmp_path,
            ca=mine / "ca.pem",
            cert=other / f"{CLIENT}.pem",
            key=other / f"{CLIENT}-key.pem",
        )
    )
    assert f"node 'prison' at 127.0.0.1:{fed.ports['prison']}" in message
    assert "does not trust this client's certificate" in message
    assert "Socket closed" not in message
    shown = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "catalog", "show", "--federation",
         tmp_path / "federation.toml", "--node", "prison"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 3 and len(shown.stderr.strip().splitlines()) == 1, shown.stderr


def test_a_node_outside_this_clients_ca_is_refused_and_told_which_file(prison, tmp_path):
    fed, _, _ = prison
    other = tmp_path / "other"
    init_federation(other, ["prison"], [CLIENT], force=True)
    message = _failure(
        _federation_with(
            fed,
            tmp_path,
            ca=other / "ca.pem",
            cert=other / f"{CLIENT}.pem",
            key=other / f"{CLIENT}-key.pem",
        )
    )
    assert "node's certificate is not signed by the CA this client trusts (tls.ca" in message


def test_the_matches_file_names_only_the_officers_own_identifiers(prison, tmp_path):
    """--out - must not leak the rejects to stdout: the invalid cells stay masked in a file."""
    fed, matched, _ = prison
    ids = tmp_path / "ids.csv"
    with open(ids, "w", newline="") as handle:
        csv.writer(handle).writerows(
            [["id_number"], *([x] for x in matched[:3]), ["15010219800825454"]]
        )
    run = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "query", "--federation", fed.federation_file,
         "--node", "prison", "--dataset", "prison", "--ids", ids, "--purpose", "screening",
         "--out", "-"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "15010219800825454" not in run.stdout + run.stderr
    assert "15010********5454" in (tmp_path / "ids.rejects.csv").read_text()
