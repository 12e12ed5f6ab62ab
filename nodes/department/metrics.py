"""Prometheus metrics of a running node, served over HTTP where ``[node] metrics`` says.

Counts and names only, like the audit log: requests by method, status and client (certificate
name), elements evaluated by client and dataset, the budget each client has left per window, and
the last build of each dataset. No identifier, blinded element or label ever reaches a metric. The
endpoint is plain HTTP without authentication (as Prometheus scrapes by default): bind it to
loopback or the monitoring network only (docs/operator-guide.md).

It is hooked in at three points: the server's admission layer (``nodes.department.admission``)
reports every call and the status it ended with (``count``); the services' audit events
(``observe``) carry the evaluated counts; budgets and builds are read from the state folder when
scraped, so figures written by other processes (``psi node build``, ``psi node catalog approve``)
are never stale.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import astuple
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nodes.department.budgets import Budgets
from nodes.department.state import NodeState
from psi.errors import InputError, KinlinkError

UNAUTHENTICATED = "-"  # the client label of a call without a verified certificate


class NodeMetrics:
    """The node's metrics registry; ``serve`` exposes it on ``host:port``."""

    def __init__(self, state: NodeState, budgets: Budgets):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kinlink_requests",
            "gRPC calls answered, by method, status code and client certificate name",
            ["method", "code", "client"],
            registry=self.registry,
        )
        self.evaluated = Counter(
            "kinlink_elements_evaluated",
            "Blinded elements evaluated (OPRF), by client and dataset",
            ["client", "dataset"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state, budgets))
        self.server: Any = None

    def observe(self, event: dict) -> None:
        """Count what an audit event reports (``elements_evaluated``)."""
        if event.get("event") == "elements_evaluated":
            client = event.get("peer", {}).get("cn", UNAUTHENTICATED)
            self.evaluated.labels(client, event.get("dataset", "")).inc(event.get("evaluated", 0))

    def count(self, method: str, code: grpc.StatusCode, client: str) -> None:
        """Count a call that ended with ``code`` (``nodes.department.admission`` reports each)."""
        self.requests.labels(method, code.name, client or UNAUTHENTICATED).inc()

    def serve(self, address: str) -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0 picks one); returns the port bound."""
        host, _, port = address.rpartition(":")
        try:
            self.server, _ = start_http_server(int(port), host.strip("[]"), self.registry)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot serve metrics on {address}: {exc}") from None
        return self.server.server_port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class _StateCollector(Collector):
    """Budgets left and last builds, read from the state folder at each scrape."""

    def __init__(self, state: NodeState, budgets: Budgets):
        self.state, self.budgets = state, budgets
        self._lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            yield from self._budgets()
            yield from self._builds()

    def _budgets(self) -> Iterator[GaugeMetricFamily]:
        left = GaugeMetricFamily(
            "kinlink_budget_left_elements",
            "Elements a client may still have evaluated, per dataset and window (day: rolling "
            "24 hours; epoch: the current key epoch); windows without a limit are left out",
            labels=["client", "dataset", "window"],
        )
        config = self.state.config
        clients = {g.client for g in config.grants} | self.state.registry.clients()
        for dataset in config.datasets:
            try:
                epoch = self.state.keyring().current(dataset)[0]
            except KinlinkError:
                continue
            for client in sorted(clients):
                grant = self.state.registry.grant(config, client, dataset)
                if grant is None:
                    continue
                used = self.budgets.used(client, dataset, epoch)
                _, per_day, per_epoch = astuple(grant.limits)
                for window, limit in (("day", per_day), ("epoch", per_epoch)):
                    if limit is not None:
                        left.add_metric([client, dataset, window], max(limit - used[window], 0))
        yield left

    def _builds(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "seconds": GaugeMetricFamily(
                "kinlink_build_seconds", "Duration of the dataset's last build", labels=["dataset"]
            ),
            "finished": GaugeMetricFamily(
                "kinlink_build_finished_timestamp_seconds",
                "When the dataset's last build finished (Unix time)",
                labels=["dataset"],
            ),
            "entries": GaugeMetricFamily(
                "kinlink_table_entries",
                "Entries of the dataset's last built table",
                labels=["dataset"],
            ),
            "epoch": GaugeMetricFamily(
                "kinlink_key_epoch", "The dataset's key epoch of its last build", labels=["dataset"]
            ),
        }
        for dataset in self.state.config.datasets:
            record = self.state.last_build(dataset)
            for key, family in families.items():
                if key in record:
                    family.add_metric([dataset], record[key])
        yield from families.values()
