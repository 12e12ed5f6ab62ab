"""The node's gRPC server: the labelled-PSI and statistics services, health and reflection, over
mutual TLS, on ``grpc.aio`` in an event loop of its own.

A call waiting for its client costs a coroutine, not a thread, and every handler runs behind the
per-client bounds and deadlines of ``nodes.department.admission``; health is answered on the loop
itself, from capacity no client can hold. A node refuses to start on a port another process
listens on (no ``SO_REUSEPORT``: two nodes would share one address and answer each other's
clients) and under a ``[node] id`` its certificate does not carry. ``RunningNode.stop`` gives the
calls in progress a bounded grace, then cancels them: the node stops within about
``[serve] stop_grace_seconds`` however much work its clients queued.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nodes.department.admission import Admission
from nodes.department.budgets import Budgets, unlimited
from nodes.department.check import bindable, split_address
from nodes.department.metrics import NodeMetrics
from nodes.department.node import SERVICE, DepartmentNode
from nodes.department.state import NodeState
from nodes.department.statistics import STATISTICS_SERVICE, StatisticsServicer
from nodes.shared.atrest import private_folder
from nodes.shared.audit.log import AuditLog
from nodes.shared.audit.signing import PassphraseSeal, open_party_log
from nodes.shared.certs import Role, party_problems
from nodes.shared.config import NodeConfig
from nodes.shared.tls import server_credentials
from protocols.kinlink.v1 import psi_pb2_grpc, stats_pb2_grpc
from protocols.limits import GRPC_OPTIONS
from psi.errors import InputError, Source

log = logging.getLogger("kinlink.node")

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *GRPC_OPTIONS,
    ("grpc.so_reuseport", 0),  # a port in use is refused, not shared
    ("grpc.server_handshake_timeout_ms", 10_000),  # a TLS handshake that stalls is dropped
    ("grpc.max_connection_idle_ms", 300_000),  # a connection without calls is closed
)
HEALTH_SECONDS = 2.0  # how often builds and rotations by other processes are picked up


@dataclass
class RunningNode:
    port: int
    state: NodeState
    budgets: Budgets
    audit: AuditLog
    metrics: NodeMetrics | None
    metrics_port: int | None
    warnings: tuple[str, ...]  # for the operator, at start: grants without a limit
    _server: grpc.aio.Server
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _executor: ThreadPoolExecutor
    _health: asyncio.Task

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, give those in progress ``grace`` seconds (default: the node's
        ``[serve] stop_grace_seconds``), cancel the rest, and close the node's stores."""
        grace = self.state.config.serve.stop_grace_seconds if grace is None else grace

        async def stop() -> None:
            self._health.cancel()
            await self._server.stop(grace)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._executor.shutdown(wait=True, cancel_futures=True)  # the chunks in hand: bounded
        self._loop.close()
        if self.metrics is not None:
            self.metrics.stop()
        self.budgets.close()
        self.audit.close()
        log.info("node %s stopped", self.state.config.id)


def start_node(config: NodeConfig, passphrase: bytes, *, workers: int = 16) -> RunningNode:
    """Start serving on ``config.listen`` (port 0 picks a free port; see ``RunningNode.port``),
    and the Prometheus metrics on ``config.metrics`` where it is set; ``workers`` threads do the
    handlers' work."""
    _check_identity(config)
    _check_listen(config)
    state = NodeState(config, passphrase)
    state.keyring()  # fail now, clearly, if the node was never built or the passphrase is wrong
    private_folder(config.state)
    budgets = Budgets(config.state / "budgets.sqlite")
    audit = open_party_log(config.state, config.id, PassphraseSeal(passphrase))
    warnings = _announce_unlimited(config, audit)
    metrics = NodeMetrics(state, budgets) if config.metrics else None
    services = (
        DepartmentNode(config, state, budgets, audit),
        StatisticsServicer(config, state, budgets, audit),
    )
    for service in services:
        service.metrics = metrics
    admission = Admission(config.serve, services[0]._record, metrics.count if metrics else None)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kinlink-node")
    loop = asyncio.new_event_loop()
    loop.set_default_executor(executor)
    thread = threading.Thread(target=loop.run_forever, name="kinlink-server", daemon=True)
    thread.start()
    try:
        server, port, task = asyncio.run_coroutine_threadsafe(
            _serve(config, state, services, admission), loop
        ).result()
        metrics_port = metrics.serve(config.metrics) if metrics and config.metrics else None
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        executor.shutdown()
        budgets.close()
        audit.close()
        raise
    log.info("node %s serving on port %d", config.id, port)
    return RunningNode(
        port,
        state,
        budgets,
        audit,
        metrics,
        metrics_port,
        warnings,
        server,
        loop,
        thread,
        executor,
        task,
    )


def _announce_unlimited(config: NodeConfig, audit: AuditLog) -> tuple[str, ...]:
    """Warn of every grant with a budget window written "unlimited", in the node log and the
    audit log (``budget_unlimited``, which ``psi audit report`` flags); the warnings, for the
    operator's terminal."""
    warnings = []
    for client, dataset, windows, warning in unlimited(config):
        log.warning(warning)
        audit.append(
            {
                "event": "budget_unlimited",
                "peer": {"cn": client},
                "dataset": dataset,
                "detail": windows,
            }
        )
        warnings.append(warning)
    return tuple(warnings)


def _check_identity(config: NodeConfig) -> None:
    """A node serves under the name its certificate carries, with a certificate that works, or
    not at all: clients grant, pin and log it by that name (``psi node check`` says the same)."""
    problems = party_problems(*config.tls.read(), config.id, Role.NODE)
    if problems:
        raise InputError(
            f"node.tls {config.tls.cert.name}: {'; '.join(problems)}", Source(str(config.path))
        )


def _check_listen(config: NodeConfig) -> None:
    """Refuse an address another process listens on before gRPC binds (it would log its own
    failure to stderr)."""
    problem = bindable(*split_address(config.listen))
    if problem:
        raise InputError(f"node.listen {config.listen}: {problem}", Source(str(config.path)))


async def _serve(
    config: NodeConfig,
    state: NodeState,
    services: tuple[DepartmentNode, StatisticsServicer],
    admission: Admission,
) -> tuple[grpc.aio.Server, int, asyncio.Task]:
    server = grpc.aio.server(interceptors=[admission], options=SERVER_OPTIONS)
    psi_pb2_grpc.add_DepartmentNodeServicer_to_server(services[0], server)
    stats_pb2_grpc.add_StatisticsServicer_to_server(services[1], server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection(
        (
            SERVICE,
            STATISTICS_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        port = server.add_secure_port(config.listen, server_credentials(config.tls))
    except RuntimeError:
        port = 0
    if port == 0:
        raise InputError(f"cannot listen on {config.listen}", Source(str(config.path)))
    await server.start()
    await _refresh(checker, state)
    return server, port, asyncio.create_task(_watch(checker, state))


async def _refresh(checker, state: NodeState) -> None:
    """SERVING for the node; per dataset, SERVING once its tables are built."""
    built = await asyncio.get_running_loop().run_in_executor(
        None, lambda: {d: state.is_built(d) for d in state.config.datasets}
    )
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    for dataset, ready in built.items():
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await checker.set(dataset, status)


async def _watch(checker, state: NodeState) -> None:
    """Pick up builds and rotations made by other processes."""
    while True:
        await asyncio.sleep(HEALTH_SECONDS)
        try:
            await _refresh(checker, state)
        except Exception:  # a state folder being rewritten: the next round sees it whole
            log.exception("health refresh failed")
