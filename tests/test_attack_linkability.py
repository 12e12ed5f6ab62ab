"""Colluding departments compare the blinded elements they were sent (issue: linkability).

With the default shared blinds, two nodes receive the very same elements for the same people and
can tell they were asked about the same (still unknown) person; with ``blinds = "per-node"`` in
the federation file no element reaches two nodes, and the results are the same."""

from collections import defaultdict
from datetime import date

import grpc
import pytest

from nodes.client.client import Client, NodeError
from nodes.demo.federation import LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.shared.config import load_federation
from psi.errors import InputError

NODES = ("prison", "police")


class ElementsByDataset(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """What each department receives: the blinded elements of every Evaluate stream, by the
    dataset of its session (what colluding departments would pool)."""

    def __init__(self):
        self.datasets: dict[str, str] = {}  # session id -> dataset
        self.elements: dict[str, set[bytes]] = defaultdict(set)

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        if details.method.endswith("/OpenSession") and outcome.exception() is None:
            self.datasets[outcome.result().session_id] = outcome.result().dataset_id
        return outcome

    def intercept_stream_stream(self, continuation, details, requests):
        def kept():
            dataset = None
            for chunk in requests:
                dataset = dataset or self.datasets.get(chunk.session_id)
                self.elements[dataset].update(
                    chunk.elements[i : i + 32] for i in range(0, len(chunk.elements), 32)
                )
                yield chunk

        return continuation(details, kept() if details.method.endswith("/Evaluate") else requests)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    city = generate_city(children=60, as_of=date(2026, 11, 30), seed=11)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(
        tmp_path_factory.mktemp("federation"), {d: paths[d] for d in NODES}
    ) as fed:
        fed.setup()
        fed.build()
        fed.start()
        yield fed, city


@pytest.mark.parametrize("blinds, linked", [("shared", True), ("per-node", False)])
def test_colluding_departments_link_only_shared_blinds(federation, blinds, linked):
    fed, city = federation
    ids = sorted({x for row in city.roster for x in (city.canonical(row.father_id),) if x})[:40]
    text = fed.federation_file.read_text(encoding="utf-8")
    path = fed.root / f"federation-{blinds}.toml"
    path.write_text(
        text.replace(
            'cache = "client-cache"\nblinds = "shared"',
            f'cache = "cache-{blinds}"\nblinds = "{blinds}"',
        ),
        encoding="utf-8",
    )
    recorder = ElementsByDataset()
    with Client(load_federation(path), interceptors=(recorder,)) as client:
        results = client.query_many([(d, d) for d in NODES], ids, purpose="screening")
    for (node, _), result in results.items():
        assert not isinstance(result, NodeError), result
        assert {x for x, _ in result.matches} == expected_matches(city)[node] & set(ids)
    prison, police = recorder.elements["prison"], recorder.elements["police"]
    assert len(prison) == len(police) == len(ids)
    assert (prison == police) is linked
    assert linked or not prison & police


def test_an_unknown_blinds_choice_is_refused(federation, tmp_path):
    fed, _ = federation
    path = tmp_path / "federation.toml"
    path.write_text(
        fed.federation_file.read_text(encoding="utf-8").replace(
            'blinds = "shared"', 'blinds = "sometimes"'
        ),
        encoding="utf-8",
    )
    with pytest.raises(InputError, match=r'client\.blinds: must be "shared" or "per-node"'):
        load_federation(path)
