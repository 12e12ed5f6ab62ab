"""Statistics end to end over real gRPC with mutual TLS on loopback: node processes, the client,
what the node receives, the audit log, refusals, and ``psi stats`` as a subprocess."""

import csv
import json
import re
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import grpc
import numpy as np
import pytest

from nodes.client.client import Client, NodeError
from nodes.client.statistics import StatsClient
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.shared.audit.log import read_log
from nodes.shared.certs import Role, issue
from nodes.shared.config import Limits, StatisticsPolicy, load_federation, load_node_config
from protocols.kinlink.v1 import psi_pb2, psi_pb2_grpc, stats_pb2, stats_pb2_grpc
from protocols.limits import GRPC_OPTIONS
from psi import paillier, stats
from psi.errors import InputError
from psi.ids import check_character, contains_identifier
from psi.stats import DST, PROTOCOLS, count_common
from psi.suites import get_suite

AS_OF = date(2026, 11, 30)
SUITE = get_suite("ristretto255-SHA512")
MIN = 20
PRISON = StatisticsPolicy(
    PROTOCOLS, ("statistics",), min_elements=MIN, max_groups=8, min_key_bits=1024
)
POLICE = StatisticsPolicy(("cardinality", "intersection_sum"), ("statistics",))  # the defaults
PER_SESSION = 5000


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    city = generate_city(children=300, as_of=AS_OF, seed=3)
    return city, write_city(city, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def federation(city, tmp_path_factory):
    _, paths = city
    registers = {d: paths[d] for d in ("prison", "police", "court")}
    with LocalFederation(
        tmp_path_factory.mktemp("federation"),
        registers,
        limits=Limits(PER_SESSION, 10_000_000, 100_000_000),
        statistics={"prison": PRISON, "police": POLICE},
    ) as fed:
        fed.setup()
        issue(fed.certs, "education", Role.CLIENT)
        fed.build()
        fed.start()
        yield fed


@pytest.fixture(scope="module")
def inputs(city):
    """Civil affairs' parents, each with a value (days of support) and a county."""
    c, _ = city
    ids = sorted(
        {
            x
            for row in c.roster
            for x in (c.canonical(row.father_id), c.canonical(row.mother_id))
            if x
        }
    )
    rng = np.random.default_rng(7)
    values = rng.integers(0, 400, len(ids)).tolist()
    counties = [f"county-{i}" for i in rng.integers(0, 4, len(ids))]
    return ids, values, counties


def plain(ids, values, groups, inside):
    totals = {}
    for x, v, g in zip(ids, values, groups, strict=True):
        if x in inside:
            count, total = totals.get(g, (0, 0))
            totals[g] = (count + 1, total + v)
    return totals


class Recorder(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
):
    """Every message the client sends (which is what the node receives) and receives, by method."""

    def __init__(self):
        self.sent, self.received = [], []

    def _record(self, where, method, messages):
        for message in messages:
            where.append((method.rsplit("/", 1)[-1], message))
            yield message

    def intercept_unary_unary(self, continuation, details, request):
        list(self._record(self.sent, details.method, [request]))
        outcome = continuation(details, request)
        if outcome.exception() is None:
            list(self._record(self.received, details.method, [outcome.result()]))
        return outcome

    def intercept_unary_stream(self, continuation, details, request):
        list(self._record(self.sent, details.method, [request]))
        return self._record(self.received, details.method, continuation(details, request))

    def intercept_stream_stream(self, continuation, details, requests):
        requests = self._record(self.sent, details.method, requests)
        return self._record(self.received, details.method, continuation(details, requests))

    def intercept_stream_unary(self, continuation, details, requests):
        outcome = continuation(details, self._record(self.sent, details.method, requests))
        if outcome.exception() is None:
            list(self._record(self.received, details.method, [outcome.result()]))
        return outcome


@pytest.fixture
def scalars(monkeypatch):
    """The client's secret blinding scalars, kept by the test to recompute a·H(x)."""
    kept = []

    class Kept(stats.Blinder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            kept.append(self._scalar)

    monkeypatch.setattr("nodes.client.statistics.Blinder", Kept)
    return kept


def run(federation, recorder=None, node="prison", **kwargs):
    config = load_federation(federation.federation_file)
    client = Client(config, interceptors=(recorder,) if recorder else ())
    with client:
        return StatsClient(client, key_bits=1024).run(
            node, node, kwargs.pop("ids"), purpose="statistics", **kwargs
        )


def test_cardinality_sum_and_grouped_sums_equal_the_plaintext(city, federation, inputs):
    c, _ = city
    ids, values, counties = inputs
    inside = expected_matches(c)["prison"]
    truth = plain(ids, values, counties, inside)
    result = run(federation, ids=ids)
    assert (result.intersection, result.total, result.groups) == (len(inside), None, None)
    assert result.node_set_size == len({r.id_number for r in c.registers["prison"]})
    summed = run(federation, ids=ids, values=values)
    assert summed.intersection == len(inside) > 20
    assert summed.total == sum(t for _, t in truth.values())
    grouped = run(federation, ids=ids, values=values, groups=counties)
    assert {g: (t.count, t.sum) for g, t in grouped.groups.items() if t.count} == truth
    counted = run(federation, ids=ids, groups=counties)
    assert {g: (t.count, t.sum) for g, t in counted.groups.items() if t.count} == {
        g: (n, None) for g, (n, _) in truth.items()
    }
    police = run(federation, node="police", ids=ids, values=values)
    assert police.intersection == len(expected_matches(c)["police"])


def test_the_node_receives_only_blinded_shuffled_elements_and_ciphertexts(
    federation, inputs, scalars
):
    ids, values, counties = inputs
    recorder = Recorder()
    run(federation, recorder, ids=ids, values=values, groups=counties)
    needles = re.compile("|".join(re.escape(x[:17]) for x in ids).encode())
    plain_hashes = SUITE.hash_to_group([x.encode() for x in ids], DST)
    [a] = scalars
    mine = SUITE.scalar_mult(a, plain_hashes)  # a·H(x) in input order
    fetched = np.concatenate(
        [
            np.frombuffer(m.elements, np.uint8).reshape(-1, 32)
            for name, m in recorder.received
            if name == "FetchNodeSet"
        ]
    )
    kinds = {type(m).__name__ for name, m in recorder.sent if name != "GetCatalogue"}
    assert kinds == {"OpenStatisticsRequest", "NodeSetRequest", "SumChunk"}
    returned, pairs, ciphertexts = [], [], []
    for name, message in recorder.sent:
        assert not needles.search(message.SerializeToString()), name  # no identifier anywhere
        if isinstance(message, stats_pb2.OpenStatisticsRequest):
            assert message.element_count == len(ids) and message.groups == 4
            assert not any(
                contains_identifier(t) for t in (message.dataset_id, message.purpose_code)
            )
            public = paillier.PublicKey.from_bytes(message.paillier_public_key, min_bits=1024)
        if isinstance(message, stats_pb2.SumChunk) and message.HasField("node_set"):
            returned.append(np.frombuffer(message.node_set.elements, np.uint8).reshape(-1, 32))
        if isinstance(message, stats_pb2.SumChunk) and message.HasField("pairs"):
            pairs.append(np.frombuffer(message.pairs.elements, np.uint8).reshape(-1, 32))
            ciphertexts += public.ciphertexts_from_bytes(message.pairs.ciphertexts)
    returned, pairs = np.concatenate(returned), np.concatenate(pairs)
    # The pairs are exactly a·H(x) of the inputs, never H(x), in an order unrelated to the input's.
    assert len(pairs) == len(ids) and count_common(pairs, mine) == len(ids)
    assert count_common(pairs, plain_hashes) == 0
    assert (pairs == mine).all(axis=1).mean() < 0.05
    # The node's set comes back as a·(b·H(y)), re-shuffled: nothing lines up with what it sent.
    reblinded = SUITE.scalar_mult(a, fetched)
    assert count_common(returned, reblinded) == len(fetched)
    assert (returned == reblinded).all(axis=1).mean() < 0.05
    # Values travel only encrypted: distinct ciphertexts for repeated values, none in clear.
    assert len(ciphertexts) == len(ids) and len(set(ciphertexts)) == len(ids)
    assert not set(ciphertexts) & set(values)


def test_cardinality_transcript_and_the_audit_log(federation, inputs, scalars):
    ids, _, _ = inputs
    recorder = Recorder()
    result = run(federation, recorder, ids=ids)
    [a] = scalars
    mine = SUITE.scalar_mult(a, SUITE.hash_to_group([x.encode() for x in ids], DST))
    sent = np.concatenate(
        [
            np.frombuffer(m.elements, np.uint8).reshape(-1, 32)
            for name, m in recorder.sent
            if name == "Cardinality"
        ]
    )
    assert count_common(sent, mine) == len(ids) and (sent == mine).all(axis=1).mean() < 0.05
    entries = read_log(federation.root / "prison" / "state" / "audit.sqlite").entries
    session = next(e["session_id"] for e in reversed(entries) if e.get("protocol") == "cardinality")
    logged = [e for e in entries if e.get("session_id") == session]
    assert [e["event"] for e in logged] == ["session_opened", "elements_evaluated"]
    opened, done = logged
    assert opened["declared"] == done["evaluated"] == len(ids)
    assert opened["set_size"] == done["set_size"] == result.node_set_size
    assert "intersection" not in done and done["outcome"] == "ok"  # the node never learns it
    sums = [e for e in entries if e.get("protocol") == "intersection_sum" and "intersection" in e]
    assert sums and all(e["intersection"] > 0 for e in sums)
    allowed = {
        "event",
        "peer",
        "session_id",
        "dataset",
        "purpose",
        "protocol",
        "declared",
        "evaluated",
        "set_size",
        "intersection",
        "groups",
        "limit",
        "key_epoch",
        "outcome",
        "index",
        "time",
        "legal_basis_ref",
        "reason",
    }
    assert all(set(e) <= allowed for e in entries if "protocol" in e)
    log_bytes = (federation.root / "prison" / "state" / "audit.sqlite").read_bytes()
    assert not re.search("|".join(re.escape(x[:17]) for x in ids).encode(), log_bytes)


def test_budgets_are_charged_and_bound_statistics(federation, inputs):
    ids, _, _ = inputs
    budgets = federation.root / "prison" / "state" / "budgets.sqlite"

    def charged():
        with sqlite3.connect(budgets) as db:
            return db.execute("SELECT COALESCE(SUM(elements), 0) FROM charges").fetchone()[0]

    before = charged()
    run(federation, ids=ids[:50])
    assert charged() == before + 50
    many = [f"150102{1960 + i // 1000}0101{i % 1000:03d}" for i in range(PER_SESSION + 1)]
    many = [b + check_character(b) for b in many]
    with pytest.raises(NodeError, match=f"at most {PER_SESSION} elements") as info:
        run(federation, ids=many)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def channel(fed, node, name=CLIENT):
    certs = fed.certs
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / f"{name}-key.pem").read_bytes(),
        (certs / f"{name}.pem").read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{fed.ports[node]}", credentials, GRPC_OPTIONS)


KEY_1024 = paillier.generate(1024).public.to_bytes()


def open_request(**overrides):
    request = dict(
        dataset_id="prison",
        purpose_code="statistics",
        protocol="cardinality",
        element_count=MIN,
        protocol_version=1,
    )
    request.update(overrides)
    return stats_pb2.OpenStatisticsRequest(**request)


SUM = {
    "protocol": "intersection_sum",
    "paillier_public_key": KEY_1024,
    "ciphertexts_per_element": 1,
}


@pytest.mark.parametrize(
    ("who", "node", "overrides", "code", "message"),
    [
        ("education", "prison", {}, "PERMISSION_DENIED", "not granted dataset 'prison'"),
        (CLIENT, "prison", {"dataset_id": "tax"}, "NOT_FOUND", "no dataset 'tax'"),
        (
            CLIENT,
            "court",
            {"dataset_id": "court", "purpose_code": "screening"},
            "PERMISSION_DENIED",
            "allows: none",
        ),
        (
            CLIENT,
            "police",
            {"dataset_id": "police", "protocol": "grouped_sum", "groups": 2},
            "PERMISSION_DENIED",
            "does not allow the statistics protocol 'grouped_sum'",
        ),
        (
            CLIENT,
            "prison",
            {"purpose_code": "screening"},
            "PERMISSION_DENIED",
            "not a statistics purpose",
        ),
        (
            CLIENT,
            "prison",
            {"purpose_code": "marketing"},
            "PERMISSION_DENIED",
            "purpose 'marketing' is not granted",
        ),
        (CLIENT, "prison", {"protocol": "median"}, "INVALID_ARGUMENT", "unknown statistics"),
        (
            CLIENT,
            "prison",
            {"element_count": MIN - 1},
            "INVALID_ARGUMENT",
            f"at least {MIN} elements",
        ),
        (
            CLIENT,
            "police",
            {"dataset_id": "police", "element_count": 99},
            "INVALID_ARGUMENT",
            "at least 100 elements",
        ),
        (
            CLIENT,
            "prison",
            {"element_count": PER_SESSION + 1},
            "RESOURCE_EXHAUSTED",
            f"at most {PER_SESSION} elements",
        ),
        (
            CLIENT,
            "prison",
            {"paillier_public_key": KEY_1024},
            "INVALID_ARGUMENT",
            "cardinality takes no Paillier key",
        ),
        (
            CLIENT,
            "prison",
            {**SUM, "paillier_public_key": b"\x01\x00"},
            "INVALID_ARGUMENT",
            "Paillier key",
        ),
        (
            CLIENT,
            "police",
            {**SUM, "dataset_id": "police", "element_count": 100},
            "INVALID_ARGUMENT",
            "outside [2048",
        ),  # the production minimum
        (
            CLIENT,
            "prison",
            {**SUM, "protocol": "grouped_sum", "groups": 9},
            "INVALID_ARGUMENT",
            "1 to 8 groups",
        ),
        (CLIENT, "prison", {"protocol_version": 9}, "FAILED_PRECONDITION", "version 9"),
    ],
)
def test_refusals(federation, who, node, overrides, code, message):
    with channel(federation, node, who) as ch, pytest.raises(grpc.RpcError) as info:
        stats_pb2_grpc.StatisticsStub(ch).OpenStatistics(open_request(**overrides), timeout=10)
    assert info.value.code().name == code
    assert message in info.value.details()


def test_a_statistics_purpose_gets_no_labelled_query(federation):
    with channel(federation, "prison") as ch, pytest.raises(grpc.RpcError) as info:
        psi_pb2_grpc.DepartmentNodeStub(ch).OpenSession(
            psi_pb2.OpenSessionRequest(
                dataset_id="prison",
                purpose_code="statistics",
                element_count=5,
                suite=SUITE.name,
                protocol_version=1,
            ),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "for statistics only" in info.value.details()
    with channel(federation, "prison") as ch:
        catalogue = psi_pb2_grpc.DepartmentNodeStub(ch).GetCatalogue(psi_pb2.CatalogueRequest())
    [dataset] = catalogue.datasets
    assert list(dataset.statistics.protocols) == list(PROTOCOLS)
    assert list(dataset.statistics.purposes) == ["statistics"]
    assert dataset.statistics.min_elements == MIN


def session(stub, **overrides):
    opened = stub.OpenStatistics(open_request(**overrides), timeout=10)
    fetched = list(stub.FetchNodeSet(stats_pb2.NodeSetRequest(session_id=opened.session_id)))
    assert sum(c.count for c in fetched) == opened.node_set_size
    return opened, fetched


BLINDER = stats.Blinder()


def elements(n):
    """n valid, distinct elements (the first n of one sequence)."""
    return BLINDER.hash_blind([b"%d" % i for i in range(n)]).tobytes()


def cardinality(stub, opened, data, count, sequence=0):
    chunk = stats_pb2.ElementChunk(
        session_id=opened.session_id, sequence=sequence, count=count, elements=data
    )
    return list(stub.Cardinality(iter([chunk]), timeout=20))


def test_malformed_or_short_cardinality_streams_are_refused(federation):
    with channel(federation, "prison") as ch:
        stub = stats_pb2_grpc.StatisticsStub(ch)
        cases = [
            (b"\xff" * 32 * MIN, MIN, "INVALID_ARGUMENT", "not a canonical ristretto255"),
            (elements(MIN)[:-1], MIN, "INVALID_ARGUMENT", "bytes for 20 elements"),
            (elements(MIN - 1), MIN - 1, "INVALID_ARGUMENT", "declared 20 elements; 19 sent"),
            (elements(MIN - 1) * 2, 2 * MIN - 2, "RESOURCE_EXHAUSTED", "declared 20 elements"),
            (elements(MIN - 1) + elements(1), MIN, "INVALID_ARGUMENT", "1 repeated elements"),
        ]
        for data, count, code, message in cases:
            opened, _ = session(stub)
            with pytest.raises(grpc.RpcError) as info:
                cardinality(stub, opened, data, count)
            assert info.value.code().name == code
            assert message in info.value.details()
        opened = stub.OpenStatistics(open_request(), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            cardinality(stub, opened, elements(MIN), MIN)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # node set first
        opened, _ = session(stub)
        answer = cardinality(stub, opened, elements(MIN), MIN)
        assert sum(c.count for c in answer) == MIN
        with pytest.raises(grpc.RpcError) as info:
            cardinality(stub, opened, elements(MIN), MIN)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # used up: one run per session


def test_malformed_sum_streams_are_refused(federation):
    key = paillier.generate(1024)
    width = key.public.ciphertext_bytes
    good = key.public.ciphertexts_to_bytes(key.public.encrypt(list(range(MIN))))
    with channel(federation, "prison") as ch:
        stub = stats_pb2_grpc.StatisticsStub(ch)
        overrides = {**SUM, "paillier_public_key": key.public.to_bytes()}
        for ciphertexts, message in [
            (bytes(width * MIN), "ciphertext 0 is outside"),
            (good[:-1], "not a multiple"),
        ]:
            opened, fetched = session(stub, **overrides)
            chunks = [
                stats_pb2.SumChunk(
                    session_id=opened.session_id,
                    sequence=i,
                    node_set=stats_pb2.ElementBlock(count=c.count, elements=c.elements),
                )
                for i, c in enumerate(fetched)
            ]
            chunks.append(
                stats_pb2.SumChunk(
                    sequence=len(chunks),
                    pairs=stats_pb2.PairBlock(
                        count=MIN, elements=elements(MIN), ciphertexts=ciphertexts
                    ),
                )
            )
            with pytest.raises(grpc.RpcError) as info:
                stub.IntersectionSum(iter(chunks), timeout=20)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in info.value.details()
        opened, fetched = session(stub, **overrides)
        pair = stats_pb2.SumChunk(
            session_id=opened.session_id,
            pairs=stats_pb2.PairBlock(count=MIN, elements=elements(MIN), ciphertexts=good),
        )
        with pytest.raises(grpc.RpcError) as info:  # the node's set must come back whole first
            stub.IntersectionSum(iter([pair]), timeout=20)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the node's set" in info.value.details()


def psi_stats(federation, path, *args, purpose="statistics"):
    """``psi stats`` on the prison's dataset as a subprocess."""
    return subprocess.run(
        [
            sys.executable, "-m", "nodes.cli", "stats",
            "--federation", str(federation.federation_file),
            "--node", "prison", "--dataset", "prison",
            "--ids", str(path), "--purpose", purpose, *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(path).parent,  # rejects without --out go to the current folder
    )  # fmt: skip


def write_rows(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_psi_stats_prints_and_writes_the_totals(city, federation, inputs, tmp_path):
    c, _ = city
    ids, values, counties = inputs
    inside = expected_matches(c)["prison"]
    truth = plain(ids, values, counties, inside)
    rows = [*zip(ids, values, counties, strict=True), ("11010519491231002Y", 3, "county-0")]
    path = write_rows(tmp_path / "parents.csv", ["id_number", "days", "county"], rows)
    counted = psi_stats(federation, path)
    assert counted.returncode == 0, counted.stderr
    assert f"{len(inside)} of {len(ids)} identifiers are in prison/prison" in counted.stdout
    assert "1 invalid identifiers listed in" in counted.stderr  # the last row, masked there
    out, doc = tmp_path / "totals.csv", tmp_path / "totals.json"
    grouped = psi_stats(
        federation, path, "--values", "days", "--group-by", "county", "--out", out, "--json", doc
    )
    assert grouped.returncode == 0, grouped.stderr
    with open(out, encoding="utf-8") as handle:
        totals = {r["group"]: (int(r["count"]), int(r["sum"])) for r in csv.DictReader(handle)}
    assert {g: t for g, t in totals.items() if t[0]} == truth
    document = json.loads(doc.read_text())
    assert document["sum"] == sum(t for _, t in truth.values())
    assert document["intersection"] == len(inside) and document["protocol"] == "grouped_sum"
    for run_ in (counted, grouped):
        assert not re.search("|".join(x[:17] for x in ids), run_.stdout + run_.stderr)
    assert "11010519491231002Y" not in (tmp_path / "totals.rejects.csv").read_text()


def test_psi_stats_exit_codes(federation, inputs, tmp_path):
    ids, _, _ = inputs
    rows = [(x, "1.5" if i == 3 else i) for i, x in enumerate(ids[:30])]
    path = write_rows(tmp_path / "bad.csv", ["id_number", "days"], rows)
    bad_value = psi_stats(federation, path, "--values", "days")
    assert bad_value.returncode == 2
    assert "bad.csv:5 (column days): not a whole number of 0 or more" in bad_value.stderr
    no_column = psi_stats(federation, path, "--group-by", "county")
    assert no_column.returncode == 2 and "no column 'county'" in no_column.stderr
    refused = psi_stats(federation, path, purpose="screening")
    assert refused.returncode == 3 and "not cardinality for 'screening'" in refused.stderr
    strangers = [f"15010219700101{i:03d}" for i in range(MIN)]
    path = write_rows(
        tmp_path / "strangers.csv", ["id_number"], [[b + check_character(b)] for b in strangers]
    )
    nobody = psi_stats(federation, path)
    assert nobody.returncode == 1 and f"0 of {MIN} identifiers" in nobody.stdout
    for run_ in (bad_value, no_column, refused, nobody):
        assert "Traceback" not in run_.stderr
        assert not re.search("|".join(x[:17] for x in ids), run_.stdout + run_.stderr)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('protocols = ["median"]', "unknown median"),
        ('protocols = ["cardinality"]\npurposes = []', "name at least one purpose"),
        ('protocols = ["cardinality"]\nmin_key_bits = 512', "min_key_bits: must be at least 1024"),
        ('protocols = ["cardinality"]\nmin_elements = 0', "min_elements: must be at least 1"),
        ("min_elements = 5", "protocols: missing"),
    ],
)
def test_statistics_configuration_is_checked(tmp_path, table, message):
    path = tmp_path / "node.toml"
    path.write_text(
        '[node]\nid = "prison"\ntls = { ca = "ca.pem", cert = "c.pem", key = "k.pem" }\n'
        '[datasets.prison]\ncsv = "prison.csv"\nstatuses = ["imprisoned"]\n'
        f"[datasets.prison.statistics]\n{table}\n"
    )
    with pytest.raises(InputError, match=re.escape(message)):
        load_node_config(path)
    path.write_text(path.read_text().split("[datasets.prison.statistics]")[0])
    assert load_node_config(path).datasets["prison"].statistics == StatisticsPolicy()
