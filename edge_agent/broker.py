"""Embedded MQTT broker for the demo and for users without one (``mqtt.host: embedded``).

An amqtt broker runs in a background thread with its own asyncio loop: anonymous, MQTT 3.1.1,
retained messages and Last Will, listening on loopback only. It is meant for one agent and a
few local subscribers (``affectline watch``), not as a plant broker: use mosquitto there.

The listening socket and the client connections are ours (amqtt's "external" listener): on stop
we close them first, so the port is released at once even when amqtt's own shutdown stalls on a
connected client (seen with amqtt 0.12.1).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SHUTDOWN_TIMEOUT_S = 3.0


class EmbeddedBroker:
    """A loopback MQTT broker in a background thread.

    Args:
        port: TCP port on 127.0.0.1; 0 picks a free one (read it from `port` after `start`).
        start_timeout_s: How long `start` waits for the listener.
    """

    def __init__(self, port: int = 0, start_timeout_s: float = 10.0):
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        self._port = port
        self._start_timeout_s = start_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The listening port (the requested one, or the picked one once started)."""
        return self._port

    def start(self) -> None:
        """Start listening; returns once the broker accepts connections.

        Raises:
            RuntimeError: the broker could not listen (e.g. the port is taken), with the reason.
        """
        if self._thread is not None:
            return
        # amqtt logs every connection at INFO and harmless protocol oddities at WARNING (e.g. "PUBACK
        # for unknown pending message"); keep it quiet unless the user configured its logger.
        amqtt_log = logging.getLogger("amqtt")
        if amqtt_log.level == logging.NOTSET:
            amqtt_log.setLevel(logging.ERROR)
        started: Future[None] = Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="affectline-broker", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout=self._start_timeout_s)
        except Exception as exc:
            # After a failed boot the thread closes its loop itself; a hung boot is stopped here.
            if not started.done():
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop = self._thread = None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise RuntimeError(
                f"embedded MQTT broker cannot listen on {LOOPBACK}:{self._port}: {reason}"
            ) from None
        log.info("embedded MQTT broker listening on %s:%d", LOOPBACK, self._port)

    def _serve(self, started: Future[None]) -> None:
        loop = self._loop  # stop() clears the attribute while this thread is still cleaning up
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._boot())
        except Exception as exc:
            if self._server is not None:  # bound before amqtt failed or hung: release the port now
                self._server.close()
                self._server = None
            started.set_exception(exc)
        else:
            started.set_result(None)
            loop.run_forever()
        # Let every amqtt task finish its cancellation here, in the loop, not later in a finalizer.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def _boot(self) -> None:
        config = {
            "listeners": {"default": {"type": "external"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config, loop=self._loop)
        # Bind first: a taken port then fails before amqtt starts (and would log its own traceback).
        self._server = await asyncio.start_server(self._on_client, LOOPBACK, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        await self._broker.start()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._broker is not None
        self._writers.add(writer)
        try:
            await self._broker.external_connected(
                StreamReaderAdapter(reader), StreamWriterAdapter(writer), "default"
            )
        finally:
            self._writers.discard(writer)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._broker is not None:
            try:
                await asyncio.wait_for(self._broker.shutdown(), SHUTDOWN_TIMEOUT_S)
            except Exception as exc:  # a stalled amqtt shutdown must not keep the agent from exiting
                log.warning("embedded MQTT broker shutdown: %s", exc or type(exc).__name__)

    def stop(self) -> None:
        """Close the listener and every client connection, then stop the broker (idempotent)."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(
                    timeout=SHUTDOWN_TIMEOUT_S + 2
                )
            except Exception as exc:
                log.warning("embedded MQTT broker stop: %s", exc or type(exc).__name__)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self._broker, self._server = None, None
