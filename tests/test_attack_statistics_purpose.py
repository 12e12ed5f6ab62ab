"""Attacks on the line between statistics and named matches, on a dataset that never opted in to
statistics: the purpose ``statistics`` must never yield a named match, and access to statistics
the dataset cannot serve must be refused when asked for and when approved, not granted and then
refused at every query (with a hint to ask again, in a loop)."""

from datetime import date

import grpc
import pytest

from nodes.cli import main
from nodes.client.accountability import AccountabilityClient
from nodes.client.client import Client, NodeError
from nodes.client.statistics import StatsClient
from nodes.demo.federation import CLIENT, LocalFederation
from nodes.demo.synth import expected_matches, generate_city, write_city
from nodes.department.registry import Registry
from nodes.shared.certs import Role, issue
from nodes.shared.config import STATISTICS_PURPOSE, load_federation, load_node_config
from psi.keys import PASSPHRASE_VAR

NODE = "prison"
EDUCATION = "education"
INSURANCE = "medical-insurance"


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    city = generate_city(children=120, as_of=date(2026, 11, 30), seed=15)
    paths = write_city(city, tmp_path_factory.mktemp("data"))
    with LocalFederation(tmp_path_factory.mktemp("fed"), {NODE: paths[NODE]}, statistics={}) as fed:
        fed.setup()
        # The operator grants "statistics" by hand on a dataset with no [statistics] table.
        config = fed.config_file(NODE)
        text = config.read_text(encoding="utf-8")
        config.write_text(
            text.replace('"verification"]', f'"verification", "{STATISTICS_PURPOSE}"]'),
            encoding="utf-8",
        )
        assert STATISTICS_PURPOSE in load_node_config(config).grants[0].purposes
        issue(fed.certs, EDUCATION, Role.CLIENT)
        fed.build()
        fed.start()
        education = fed.root / "education.toml"
        education.write_text(
            fed.federation_toml().replace(CLIENT, EDUCATION).replace("client-cache", "edu-cache"),
            encoding="utf-8",
        )
        fed.education = education
        fed.matched = sorted(expected_matches(city)[NODE])
        yield fed


def test_the_statistics_purpose_never_yields_named_matches(fed):
    with Client(load_federation(fed.federation_file)) as client:
        with pytest.raises(NodeError) as caught:
            client.query(NODE, NODE, fed.matched, purpose=STATISTICS_PURPOSE)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "statistics only" in str(caught.value)
        # The same client, under a labelled purpose, is served: the refusal is the purpose's.
        assert client.query(NODE, NODE, fed.matched, purpose="screening").matches


def test_statistics_on_a_dataset_that_never_opted_in_are_refused_without_a_request_hint(fed):
    client = Client(load_federation(fed.federation_file))
    with client, pytest.raises(NodeError) as caught:
        StatsClient(client).run(NODE, NODE, fed.matched, purpose=STATISTICS_PURPOSE)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "psi catalog request" not in str(caught.value)


def test_a_request_for_statistics_the_dataset_cannot_serve_is_refused_when_filed(fed):
    with Client(load_federation(fed.education)) as client, pytest.raises(NodeError) as caught:
        AccountabilityClient(client).request_access(
            NODE,
            NODE,
            [STATISTICS_PURPOSE],
            legal_basis_ref="Statistics law art. 9",
            justification="counts of parents in prison per county",
        )
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "offers no statistics" in str(caught.value)


def test_approving_statistics_the_dataset_cannot_serve_is_refused(fed, monkeypatch, capsys):
    # A request filed before the operator withdrew the dataset's statistics, say.
    config = load_node_config(fed.config_file(NODE))
    filed = Registry(config.state).file_request(
        INSURANCE, NODE, [STATISTICS_PURPOSE], frozenset({"status"}), 100, "ref", "counts"
    )
    monkeypatch.setenv(PASSPHRASE_VAR, fed.passphrase)
    status = main(["node", "catalog", "approve", str(filed.id), "--config", str(config.path)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "offers no statistics" in err and "Traceback" not in err
    assert Registry(config.state).grant(config, INSURANCE, NODE) is None
