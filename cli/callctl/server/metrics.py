"""The server's Prometheus metrics, served at ``GET /metrics`` (docs/API.md §2.1a).

One ``ServerMetrics`` per hub (so per app), on its own ``CollectorRegistry``:
never the process-wide default registry, so two apps in one process (tests,
benchmarks) keep apart.  Every ``callctl_`` metric carries ``node`` (the
hub's ``server_id``, as in the ``registered`` event); the registry also has
prometheus_client's standard ``process_*`` and ``python_info`` metrics.

The hub and the app call the small methods below at the points where things
happen; nothing here reads the Store, so a scrape costs no Store round trip.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from callctl.signaling.protocol import CallState, EndReason
from callctl.server.store import CallRecord

#: The ``Content-Type`` of ``GET /metrics``.
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Ring delivery latency buckets (seconds): a ring on a live stream takes about a
#: millisecond; one that waits for its device to (re)connect takes up to the ring timeout.
RING_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class ServerMetrics:
    """This node's registry and metrics; ``devices_online`` is read at each scrape."""

    def __init__(self, node: str, devices_online: Callable[[], int]) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        n = ["node"]
        self._streams = Gauge(
            "callctl_event_streams_open",
            "Event streams (GET /v1/events responses) being served by this node.",
            n, registry=r).labels(node)
        self._devices = Gauge(
            "callctl_devices_online",
            "Devices (user + device id) whose event stream is open on this node.",
            n, registry=r).labels(node)
        self._devices.set_function(lambda: float(devices_online()))
        calls = Gauge(
            "callctl_calls_active",
            "Calls ringing or connected, counted from the transitions this node made "
            "(created, answered, ended here), not read from the store: sum over the nodes "
            "for the total (one node's value goes below 0 when another node ends its calls).",
            ["node", "state"], registry=r)
        self._ringing = calls.labels(node, CallState.RINGING.value)
        self._connected = calls.labels(node, CallState.CONNECTED.value)
        self._ended = Counter(
            "callctl_calls_ended", "Calls ended by this node, by end reason.",
            ["node", "reason"], registry=r)
        for reason in EndReason:  # every reason from the start: rate() needs the zeros
            self._ended.labels(node, reason.value)
        self._created = Counter(
            "callctl_calls_created", "Calls created on this node (busy ones too).",
            n, registry=r).labels(node)
        self._rings = Counter(
            "callctl_rings_delivered",
            "call.incoming events written to event streams on this node (one per device "
            "rung; a ring sent again on a resumed stream counts again).",
            n, registry=r).labels(node)
        self._ring_latency = Histogram(
            "callctl_ring_delivery_seconds",
            "Seconds from a call's creation (its POST /v1/calls) to its call.incoming being "
            "written to a callee's event stream on this node.",
            n, buckets=RING_LATENCY_BUCKETS, registry=r).labels(node)
        self._store_errors = Counter(
            "callctl_store_errors", "Store operations that failed (raised) on this node.",
            n, registry=r).labels(node)

    # ------------------------------------------------------------ the hub's
    def call_created(self, call: CallRecord) -> None:
        """A call was created (ringing, or ended at once: busy)."""
        self._created.inc()
        if call.state == CallState.RINGING:
            self._ringing.inc()
        elif call.reason is not None:
            self._ended.labels(self.node, call.reason.value).inc()

    def call_answered(self) -> None:
        self._ringing.dec()
        self._connected.inc()

    def call_ended(self, was: CallState, reason: EndReason) -> None:
        """A call that was ``was`` (ringing or connected) ended."""
        if was == CallState.RINGING:
            self._ringing.dec()
        elif was == CallState.CONNECTED:
            self._connected.dec()
        self._ended.labels(self.node, reason.value).inc()

    # ------------------------------------------------------------ the app's
    def stream_opened(self) -> None:
        self._streams.inc()

    def stream_closed(self) -> None:
        self._streams.dec()

    def ring_delivered(self, latency_s: float | None) -> None:
        """A ``call.incoming`` was written to a stream, ``latency_s`` after its call's creation
        (None: the call is no longer known, so it counts without a latency)."""
        self._rings.inc()
        if latency_s is not None:
            self._ring_latency.observe(max(0.0, latency_s))  # another node's clock may be ahead

    def store_error(self) -> None:
        """The hook for a failed Store operation: whoever catches a Store exception and goes
        on calls it.  Today that is the app's ring-latency look-up; a networked store (Redis)
        that recovers from its own failures gets this bound method handed to it by
        ``create_app`` (the Store interface has no such callback yet)."""
        self._store_errors.inc()

    # ------------------------------------------------------------ the scrape
    def exposition(self) -> bytes:
        """Everything in the registry, in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
