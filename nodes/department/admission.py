"""What one client may hold of a node at once, and for how long: the node's defence against a
certificate holder who opens calls and then waits.

The node serves on ``grpc.aio`` (``nodes.department.server``): a call waiting for its client costs
a coroutine, never a thread; threads only do work whose input is in hand. ``Admission`` wraps
every handler of the server:

* every call but a health check counts against its client's bound (``[serve] calls_per_client``,
  by the common name of the verified certificate, so a renewed certificate shares it): beyond it
  the call is refused at once, ``RESOURCE_EXHAUSTED``, and logged;
* a stream's first message must arrive within ``first_message_seconds``; after it, no stream may
  wait longer than ``idle_seconds`` for its client's next message, nor for its client to read an
  answer: ``DEADLINE_EXCEEDED``, logged;
* synchronous handlers run in the server's thread pool, a server-streaming one a message at a
  time, so a client that stops reading holds no thread; asynchronous ones (the streams that read
  a client's messages) run on the event loop and hand their computation to the pool.

Health checks are never counted: a node answers them on its event loop whatever its clients hold.
Sessions per client are bounded where sessions are kept (``nodes.department.service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from nodes.shared.config import ServeLimits
from nodes.shared.tls import peer_identity

HEALTH_CHECK = "/grpc.health.v1.Health/Check"

_END = object()


class Aborted(Exception):
    """A call ended with ``code``: raised by ``CallContext.abort`` as a synchronous servicer
    expects, and by the deadlines. ``logged`` is False for what no servicer has logged."""

    def __init__(self, code: grpc.StatusCode, details: str, *, logged: bool = True):
        super().__init__(details)
        self.code, self.details, self.logged = code, details, logged

    @property
    def problem(self) -> tuple[grpc.StatusCode, str]:
        return self.code, self.details


class CallContext:
    """The servicer context the node's handlers see: ``abort`` raises at once, on the loop or in
    a thread; ``write`` waits at most the idle deadline for the client to take the message."""

    def __init__(self, context: grpc.aio.ServicerContext, idle: float):
        self._context, self._idle = context, idle

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._context.auth_context()

    def is_active(self) -> bool:
        return not self._context.cancelled()

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)

    async def write(self, message: Any) -> None:
        try:
            await asyncio.wait_for(self._context.write(message), self._idle)
        except TimeoutError:
            raise Aborted(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the client read no answer for {self._idle:g} s (the node's idle deadline)",
                logged=False,
            ) from None


class Deadlines:
    """A request stream whose first message must come within ``first`` seconds and every later
    one within ``idle`` seconds of the one before."""

    def __init__(self, requests: AsyncIterator, first: float, idle: float):
        self._requests, self._first, self._idle = requests, first, idle
        self._started = False

    def __aiter__(self) -> Deadlines:
        return self

    async def __anext__(self) -> Any:
        seconds = self._idle if self._started else self._first
        try:
            message = await asyncio.wait_for(anext(self._requests), seconds)
        except TimeoutError:
            which = "idle" if self._started else "first message"
            raise Aborted(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the client sent no message for {seconds:g} s (the node's {which} deadline)",
                logged=False,
            ) from None
        self._started = True
        return message


class Admission(grpc.aio.ServerInterceptor):
    """Per-client bounds and deadlines around every handler of a node's server. ``record``
    appends a refusal to the node's audit log (``NodeService._record``); ``count``, where given,
    is told how each call ended (``NodeMetrics.count``)."""

    def __init__(
        self,
        limits: ServeLimits,
        record: Callable[[dict], None],
        count: Callable[[str, grpc.StatusCode, str], None] | None = None,
    ):
        self.limits, self._record, self._count = limits, record, count
        self._calls: Counter[str] = Counter()  # by client name; touched on the loop only

    async def intercept_service(self, continuation, details) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        bounded = details.method != HEALTH_CHECK
        return _wrapped(handler, functools.partial(self._guard, details.method, bounded))

    def _guard(self, method: str, bounded: bool, behavior, streams_in: bool, streams_out: bool):
        name = method.rsplit("/", 1)[-1]

        async def run(request, context: grpc.aio.ServicerContext):
            peer = peer_identity(context)
            client = peer.common_name if peer else ""
            code = grpc.StatusCode.OK
            try:
                if bounded:
                    self._admit(name, client, peer)
                    self._calls[client] += 1
                try:
                    call = CallContext(context, self.limits.idle_seconds)
                    if streams_in:
                        request = Deadlines(
                            request, self.limits.first_message_seconds, self.limits.idle_seconds
                        )
                    return await _invoke(behavior, request, call, streams_out)
                finally:
                    if bounded:
                        self._calls[client] -= 1
                        if not self._calls[client]:
                            del self._calls[client]
            except Aborted as exc:
                code = exc.code
                if not exc.logged:
                    self._refuse(name, exc.code, exc.details, peer)
                await context.abort(exc.code, exc.details)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                if self._count:
                    self._count(name, code, client)

        return run

    def _admit(self, method: str, client: str, peer) -> None:
        limit = self.limits.calls_per_client
        if self._calls[client] >= limit:
            message = (
                f"client {client!r} has {limit} calls in progress on this node, the most it "
                "may ([serve] calls_per_client); retry once one has ended"
            )
            self._refuse(method, grpc.StatusCode.RESOURCE_EXHAUSTED, message, peer)
            raise Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    def _refuse(self, method: str, code: grpc.StatusCode, message: str, peer) -> None:
        event = {"peer": {"cn": peer.common_name, "fingerprint": peer.fingerprint}} if peer else {}
        self._record(
            {
                **event,
                "event": "session_refused",
                "outcome": code.name.lower(),
                "reason": f"{method}: {message}",
            }
        )


async def _invoke(behavior, request, call: CallContext, streams_out: bool) -> Any:
    """Run a servicer method: a coroutine or async generator on the loop, anything else in the
    loop's thread pool; a generator's messages are written one by one, each within the idle
    deadline."""
    loop = asyncio.get_running_loop()
    if inspect.iscoroutinefunction(behavior):
        return await behavior(request, call)
    if inspect.isasyncgenfunction(behavior):
        async with contextlib.aclosing(behavior(request, call)) as messages:
            async for message in messages:
                await call.write(message)
        return None
    result = await loop.run_in_executor(None, behavior, request, call)
    if not streams_out:
        return result
    try:
        while (message := await loop.run_in_executor(None, next, result, _END)) is not _END:
            await call.write(message)
    finally:
        with contextlib.suppress(ValueError):  # still running in a thread: closed when collected
            result.close()  # its cleanup runs now, not whenever it is collected
    return None


def _wrapped(handler: grpc.RpcMethodHandler, guard) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour passed through ``guard(behaviour, streams_in, streams_out)``
    (whether requests, responses are streams)."""
    for behavior, make, streams_in, streams_out in (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, False, False),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, False, True),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, True, False),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, True, True),
    ):
        if behavior is not None:
            return make(
                guard(behavior, streams_in, streams_out),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    raise ValueError("a method handler without a behaviour")
