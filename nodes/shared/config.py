"""Node and federation configuration files (TOML), checked on load with precise messages.

``node.toml`` says what a department serves and to whom; ``federation.toml`` is a client's view:
its identity and certificate, the nodes it may call. Every key of both is described, with
examples a test loads, in docs/configuration.md; ``KEYS`` lists them, and a key not there is
refused by name rather than ignored.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodes.shared.tls import TlsFiles
from psi.errors import InputError, Source
from psi.labels import FIELDS, REGISTER_COLUMNS, STATUS_CODES
from psi.paillier import MIN_GENERATE_BITS, MIN_KEY_BITS
from psi.stats import PROTOCOLS
from psi.tabular import DEFAULT_ENCODING, encoding_name

WINDOWS = ("session", "day", "epoch")
UNLIMITED = "unlimited"  # how node.toml lifts a budget: written out, never by leaving a key out


@dataclass(frozen=True)
class Limits:
    """Most elements a client may have evaluated on a dataset per session, per rolling 24 hours
    and per key epoch (RFC 9497 s7.2.3: budgets are what bounds enumeration of a small input
    space). ``None`` is unlimited, which node.toml must state as ``"unlimited"``; a window left
    out takes the default, sized to one monthly screening of a roster of up to 50,000 children
    (two parents each): a session of it, the day's run and a full rerun, twelve such days per
    key epoch (an epoch lasts at most a year). Docs: operator-guide.md."""

    per_session: int | None = 100_000
    per_day: int | None = 200_000
    per_epoch: int | None = 2_400_000

    def unlimited(self) -> tuple[str, ...]:
        """The windows without a limit."""
        return tuple(f"per_{w}" for w in WINDOWS if getattr(self, f"per_{w}") is None)


STATISTICS_PURPOSE = "statistics"


@dataclass(frozen=True)
class StatisticsPolicy:
    """Which aggregate statistics a dataset serves (none unless its department opts in), for
    which purposes, and the bounds that limit what repeated runs reveal (docs/statistics.md)."""

    protocols: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()  # reserved for statistics: labelled queries refuse them
    min_elements: int = 100
    max_groups: int = 16
    min_key_bits: int = MIN_KEY_BITS


@dataclass(frozen=True)
class ServeLimits:
    """What one client may hold of a running node, and for how long (docs/operator-guide.md):
    every bound has a default, so none is unlimited by omission."""

    calls_per_client: int = 16
    sessions_per_client: int = 64
    first_message_seconds: float = 10.0
    idle_seconds: float = 120.0
    stop_grace_seconds: float = 5.0


@dataclass(frozen=True)
class DatasetConfig:
    id: str
    title: str
    statuses: tuple[str, ...]
    csv: Path | None = None
    encoding: str | None = None  # of the csv file: utf-8 (default), gb18030 or gbk
    url: str | None = None
    query: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    legal_basis: str = ""
    update_frequency: str = ""
    responsible_unit: str = ""
    statistics: StatisticsPolicy = field(default_factory=StatisticsPolicy)

    def unservable(self, purposes: Iterable[str]) -> str | None:
        """Why ``purposes`` cannot be granted on this dataset, or None: the purpose
        ``statistics`` on a dataset that offers no statistics would be a grant every query
        refuses (labelled queries never serve it: it is for numbers, not names)."""
        if STATISTICS_PURPOSE in purposes and not self.statistics.protocols:
            return (
                f"dataset {self.id!r} offers no statistics (node.toml has no "
                f"[datasets.{self.id}.statistics] protocols), so purpose "
                f"{STATISTICS_PURPOSE!r} cannot be granted on it"
            )
        return None


@dataclass(frozen=True)
class Grant:
    client: str
    datasets: tuple[str, ...]
    purposes: tuple[str, ...]
    fields: frozenset[str]
    limits: Limits


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    id: str
    listen: str
    state: Path
    tls: TlsFiles
    datasets: dict[str, DatasetConfig]
    grants: tuple[Grant, ...]
    metrics: str | None = None  # host:port of the Prometheus endpoint; None: not served
    serve: ServeLimits = field(default_factory=ServeLimits)

    def grant(self, client: str, dataset: str) -> Grant | None:
        return next((g for g in self.grants if g.client == client and dataset in g.datasets), None)

    def profiles(self, dataset: str) -> set[frozenset[str]]:
        """The distinct label-field sets granted on a dataset: one table is built per set."""
        return {g.fields for g in self.grants if dataset in g.datasets}


@dataclass(frozen=True)
class NodeAddress:
    id: str
    address: str


SHARED_BLINDS, PER_NODE_BLINDS = "shared", "per-node"


@dataclass(frozen=True)
class FederationConfig:
    path: Path
    client: str
    tls: TlsFiles
    cache: Path
    nodes: dict[str, NodeAddress]
    # "shared": one blinded element per identifier, sent to every node (blinded once); "per-node":
    # a fresh blind for each node, so colluding departments cannot tell they were asked about the
    # same person (docs/threat-model.md, linkability), at one more blinding per node.
    blinds: str = SHARED_BLINDS

    def node(self, name: str) -> NodeAddress:
        if name not in self.nodes:
            known = ", ".join(self.nodes) or "none"
            raise InputError(
                f"no node {name!r} in the federation; known: {known}", Source(str(self.path))
            )
        return self.nodes[name]


class TomlReader:
    """Typed access to a parsed TOML table with errors that name the file and the key."""

    def __init__(self, path: Path, data: dict[str, Any], where: str = ""):
        self.path, self.data, self.where = path, data, where

    def fail(self, key: str, problem: str) -> InputError:
        name = f"{self.where}.{key}" if self.where else key
        return InputError(f"{name}: {problem}", Source(str(self.path)))

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "missing")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.fail(key, f"must be a {expected}")
        return value

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        values = self.get(key, list, default)
        if not all(isinstance(v, str) for v in values):
            raise self.fail(key, "must be a list of strings")
        return tuple(values)

    def only(self, known: tuple[str, ...]) -> None:
        """Refuse a key this table does not know, naming it (a misspelt key must not silently
        fall back to a default), with the nearest known key when one is close."""
        for key in self.data:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {near[0]}? " if near else ""
                raise self.fail(key, f"unknown key; {hint}known: {', '.join(known)}")

    def table(self, key: str, default: Any = ...) -> TomlReader:
        sub = f"{self.where}.{key}" if self.where else key
        return TomlReader(self.path, self.get(key, dict, default), sub)

    def file(self, key: str) -> Path:
        return (self.path.parent / self.get(key, str)).resolve()


def load_toml(path: str | os.PathLike[str]) -> TomlReader:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(
            f"cannot read the configuration: {exc.strerror}", Source(str(path))
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML: {exc}", Source(str(path))) from None
    return TomlReader(path, data)


def _tls(section: TomlReader) -> TlsFiles:
    tls = section.table("tls")
    tls.only(KEYS["tls"])
    return TlsFiles(tls.file("ca"), tls.file("cert"), tls.file("key"))


# Every key each table may hold (docs/configuration.md documents each; a test holds them equal).
KEYS: dict[str, tuple[str, ...]] = {
    "node.toml": ("node", "datasets", "serve", "grants"),
    "[node]": ("id", "listen", "state", "metrics", "tls"),
    "tls": ("ca", "cert", "key"),
    "[datasets.ID]": (
        "title",
        "csv",
        "encoding",
        "url",
        "query",
        "columns",
        "statuses",
        "legal_basis",
        "update_frequency",
        "responsible_unit",
        "statistics",
    ),
    "columns": REGISTER_COLUMNS,
    "[datasets.ID.statistics]": (
        "protocols",
        "purposes",
        "min_elements",
        "max_groups",
        "min_key_bits",
    ),
    "[serve]": tuple(vars(ServeLimits())),
    "[[grants]]": (
        "client",
        "datasets",
        "purposes",
        "fields",
        "per_session",
        "per_day",
        "per_epoch",
    ),
    "federation.toml": ("client", "nodes"),
    "[client]": ("id", "tls", "cache", "blinds"),
    "[nodes.ID]": ("address",),
}


def _dataset(reader: TomlReader, dataset_id: str) -> DatasetConfig:
    reader.only(KEYS["[datasets.ID]"])
    statuses = reader.strings("statuses")
    unknown = [s for s in statuses if s not in STATUS_CODES]
    if unknown:
        raise reader.fail(
            "statuses", f"unknown {', '.join(unknown)}; known: {', '.join(STATUS_CODES)}"
        )
    has_csv, has_sql = "csv" in reader.data, "url" in reader.data
    if has_csv == has_sql:
        raise reader.fail("csv", "give either csv = FILE or url = DATABASE-URL with query = SQL")
    columns = reader.table("columns", {})
    columns.only(KEYS["columns"])
    if not all(isinstance(v, str) for v in columns.data.values()):
        raise reader.fail("columns", "must map canonical column names to source column names")
    return DatasetConfig(
        id=dataset_id,
        title=reader.get("title", str, dataset_id),
        statuses=statuses,
        csv=reader.file("csv") if has_csv else None,
        encoding=_encoding(reader) if has_csv else None,
        url=reader.get("url", str) if has_sql else None,
        query=reader.get("query", str) if has_sql else None,
        columns=dict(columns.data),
        legal_basis=reader.get("legal_basis", str, ""),
        update_frequency=reader.get("update_frequency", str, ""),
        responsible_unit=reader.get("responsible_unit", str, ""),
        statistics=_statistics(reader.table("statistics", {})),
    )


def _encoding(reader: TomlReader) -> str | None:
    """The register file's ``encoding``, checked now rather than at the first build."""
    encoding = reader.get("encoding", str, DEFAULT_ENCODING)
    try:
        encoding_name(encoding)
    except InputError as exc:
        raise reader.fail("encoding", str(exc)) from None
    return encoding


_STATISTICS_FLOORS = {"min_elements": 1, "max_groups": 1, "min_key_bits": MIN_GENERATE_BITS}


def _statistics(reader: TomlReader) -> StatisticsPolicy:
    if not reader.data:
        return StatisticsPolicy()
    reader.only(KEYS["[datasets.ID.statistics]"])
    protocols = reader.strings("protocols")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise reader.fail(
            "protocols", f"unknown {', '.join(unknown)}; known: {', '.join(PROTOCOLS)}"
        )
    purposes = reader.strings("purposes", (STATISTICS_PURPOSE,))
    if protocols and not purposes:
        raise reader.fail("purposes", "name at least one purpose for the statistics")
    bounds = {}
    for key, least in _STATISTICS_FLOORS.items():
        bounds[key] = reader.get(key, int, getattr(StatisticsPolicy, key))
        if bounds[key] < least:
            raise reader.fail(key, f"must be at least {least}")
    return StatisticsPolicy(protocols, purposes, **bounds)


def _serve(reader: TomlReader) -> ServeLimits:
    reader.only(KEYS["[serve]"])
    values = {}
    for name, default in vars(ServeLimits()).items():
        kind = int if isinstance(default, int) else (int, float)
        values[name] = reader.get(name, kind, default)
        if values[name] <= 0:
            raise reader.fail(name, "must be positive")
    return ServeLimits(**values)


def _grant(reader: TomlReader, datasets: dict[str, DatasetConfig]) -> Grant:
    reader.only(KEYS["[[grants]]"])
    named = reader.strings("datasets")
    for name in named:
        if name not in datasets:
            raise reader.fail("datasets", f"no dataset {name!r} in this node")
    fields = frozenset(reader.strings("fields", ("status",))) | {"status"}
    if fields - FIELDS:
        raise reader.fail(
            "fields",
            f"unknown {', '.join(sorted(fields - FIELDS))}; known: {', '.join(sorted(FIELDS))}",
        )
    return Grant(
        reader.get("client", str), named, reader.strings("purposes"), fields, _limits(reader)
    )


def _limits(reader: TomlReader) -> Limits:
    """A grant's budgets: a positive number of elements, or ``"unlimited"`` written out; a key
    left out takes its default (``Limits``)."""
    given = {}
    for window in WINDOWS:
        key = f"per_{window}"
        if key not in reader.data:
            continue
        value = reader.data[key]
        if value == UNLIMITED:
            given[key] = None
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            given[key] = value
        else:
            raise reader.fail(
                key,
                f'must be a number of elements of at least 1, or "{UNLIMITED}" (in quotes) for '
                f"no limit; leave it out for the default {getattr(Limits, key)}",
            )
    return Limits(**given)


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    root = load_toml(path)
    root.only(KEYS["node.toml"])
    node = root.table("node")
    node.only(KEYS["[node]"])
    datasets_table = root.table("datasets")
    datasets = {name: _dataset(datasets_table.table(name), name) for name in datasets_table.data}
    if not datasets:
        raise root.fail("datasets", "the node serves no dataset")
    grants_list = root.get("grants", list, [])
    grants = tuple(
        _grant(TomlReader(root.path, g, f"grants[{i}]"), datasets)
        if isinstance(g, dict)
        else _fail_grant(root, i)
        for i, g in enumerate(grants_list)
    )
    return NodeConfig(
        path=root.path,
        id=node.get("id", str),
        listen=node.get("listen", str, "127.0.0.1:7443"),
        state=(root.path.parent / node.get("state", str, "state")).resolve(),
        tls=_tls(node),
        datasets=datasets,
        grants=grants,
        metrics=node.get("metrics", str, None),
        serve=_serve(root.table("serve", {})),
    )


def _fail_grant(root: TomlReader, index: int) -> Grant:
    raise root.fail(f"grants[{index}]", "must be a table ([[grants]])")


def load_federation(path: str | os.PathLike[str]) -> FederationConfig:
    root = load_toml(path)
    root.only(KEYS["federation.toml"])
    client = root.table("client")
    client.only(KEYS["[client]"])
    nodes = root.table("nodes")
    blinds = client.get("blinds", str, SHARED_BLINDS)
    if blinds not in (SHARED_BLINDS, PER_NODE_BLINDS):
        raise client.fail("blinds", f'must be "{SHARED_BLINDS}" or "{PER_NODE_BLINDS}"')
    return FederationConfig(
        path=root.path,
        client=client.get("id", str),
        tls=_tls(client),
        cache=(root.path.parent / client.get("cache", str, "cache")).resolve(),
        nodes={name: _node_address(nodes.table(name), name) for name in nodes.data},
        blinds=blinds,
    )


def _node_address(reader: TomlReader, name: str) -> NodeAddress:
    reader.only(KEYS["[nodes.ID]"])
    return NodeAddress(name, reader.get("address", str))
