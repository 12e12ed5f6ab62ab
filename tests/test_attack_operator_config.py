"""Attacks through an operator's slip in node.toml: a misspelt key must not fall back to a default
(a misspelt budget would be an unlimited budget), and a dataset must publish only the statuses it
declares (the catalogue tells clients what it holds, and the legal basis covers only that)."""

from datetime import date

import pytest

from nodes.demo.federation import DEMO_PASSPHRASE, node_toml
from nodes.demo.synth import generate_city, write_city
from nodes.department.state import NodeState
from nodes.shared.config import Limits, load_federation, load_node_config
from psi.errors import InputError

NODE = "prison"


@pytest.fixture(scope="module")
def register(tmp_path_factory):
    city = generate_city(children=120, as_of=date(2026, 11, 30), seed=16)
    return write_city(city, tmp_path_factory.mktemp("data"))[NODE]


def write_config(folder, register, edit=lambda text: text):
    path = folder / "node.toml"
    text = node_toml(NODE, register, limits=Limits(100, 1000, 10000), statistics=None)
    path.write_text(edit(text), encoding="utf-8")
    return path


def refused(path, loader=load_node_config) -> str:
    with pytest.raises(InputError) as caught:
        loader(path)
    return str(caught.value)


def test_a_misspelt_budget_is_refused_not_unlimited(tmp_path, register):
    path = write_config(tmp_path, register, lambda t: t.replace("per_session", "per_sesion"))
    message = refused(path)
    assert "grants[0].per_sesion: unknown key; did you mean per_session?" in message
    assert str(path) in message


def test_a_misspelt_register_key_is_named(tmp_path, register):
    path = write_config(tmp_path, register, lambda t: t.replace("csv =", "cvs ="))
    assert f"datasets.{NODE}.cvs: unknown key; did you mean csv?" in refused(path)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda t: t.replace('listen = "', 'lisen = "'), "node.lisen"),
        (lambda t: t.replace('key = "../', 'keyfile = "../'), "node.tls.keyfile"),
        (lambda t: t + "\n[extra]\n", "extra"),
        (lambda t: t.replace("csv =", 'columns = { id_numbr = "sfzh" }\ncsv ='), "id_numbr"),
    ],
)
def test_every_table_names_its_unknown_keys(tmp_path, register, edit, named):
    message = refused(write_config(tmp_path, register, edit))
    assert f"{named}: unknown key" in message or f".{named}: unknown key" in message


def test_a_misspelt_federation_key_is_named(tmp_path):
    path = tmp_path / "federation.toml"
    path.write_text(
        '[client]\nid = "civil-affairs"\ncahce = "cache"\n'
        'tls = { ca = "ca.pem", cert = "c.pem", key = "k.pem" }\n'
        '[nodes.prison]\naddress = "127.0.0.1:7443"\n',
        encoding="utf-8",
    )
    assert "client.cahce: unknown key; did you mean cache?" in refused(path, load_federation)


def test_a_dataset_publishes_only_the_statuses_it_declares(tmp_path, register):
    path = write_config(
        tmp_path,
        register,
        lambda t: t.replace('statuses = ["imprisoned"]', 'statuses = ["deceased"]'),
    )
    state = NodeState(load_node_config(path), DEMO_PASSPHRASE.encode())
    [report] = state.build(NODE)
    assert report.entries == 0, f"{report.entries} imprisoned people published as {NODE}"
    rejects = (state.root / NODE / "rejects.csv").read_text(encoding="utf-8")
    assert "imprisoned is not among the dataset's statuses (deceased)" in rejects
