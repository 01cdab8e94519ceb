"""The server's Prometheus metrics (GET /metrics), on a CollectorRegistry of their own (so that
several servers, or a test, in one process never share or clash).

    apd_requests_total{finish_reason}       finished requests: stop, length, cancelled (the client
                                            went away), error
    apd_rejected_requests_total{reason}     refused before decoding: invalid (400), queue_full (429),
                                            unavailable (503: draining)
    apd_prompt_tokens_total                 prompt tokens of the requests decoded
    apd_generated_tokens_total              tokens committed (EOS excluded), over all requests
    apd_request_step_tokens                 histogram: tokens one request committed in one forward
                                            (APD's tokens per step, per request)
    apd_step_seconds                        histogram: wall time of one engine forward
    apd_request_latency_seconds             histogram: submit to last token, per finished request
    apd_time_to_first_token_seconds         histogram: submit to the first committed token
    apd_queue_length, apd_running_requests, apd_slots, apd_slot_occupancy, apd_draining
                                            gauges, read from Engine.stats() at each scrape
    apd_engine_steps_total, apd_engine_forwards_total
                                            the engine's own counters, at each scrape

observe_event runs on the engine thread (prometheus_client's metrics are thread-safe).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TOKEN_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
STEP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServerMetrics:
    """The metrics of one server. `stats` is a callable returning Engine.stats()'s dict (read at
    scrape time); `draining` a callable returning whether the server is draining."""

    def __init__(self, stats, draining=lambda: False):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("apd_requests", "Finished requests by finish_reason", ["finish_reason"], registry=r)
        self.rejected = Counter("apd_rejected_requests", "Requests refused before decoding", ["reason"], registry=r)
        self.prompt_tokens = Counter("apd_prompt_tokens", "Prompt tokens of the decoded requests", registry=r)
        self.generated = Counter("apd_generated_tokens", "Tokens committed over all requests (EOS excluded)",
                                 registry=r)
        self.step_tokens = Histogram("apd_request_step_tokens", "Tokens one request committed in one forward",
                                     buckets=TOKEN_BUCKETS, registry=r)
        self.step_time = Histogram("apd_step_seconds", "Wall time of one engine forward", buckets=STEP_BUCKETS,
                                   registry=r)
        self.latency = Histogram("apd_request_latency_seconds", "Submit to finish, per request",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("apd_time_to_first_token_seconds", "Submit to the first committed token",
                              buckets=LATENCY_BUCKETS, registry=r)
        for reason in ("stop", "length", "cancelled", "error"):
            self.requests.labels(reason)
        for reason in ("invalid", "queue_full", "unavailable"):
            self.rejected.labels(reason)
        r.register(_EngineCollector(stats, draining))
        self._last_step = None

    def observe_event(self, event) -> None:
        """Account one Event (engine thread). A forward's events share its index (Event.step): the
        step time is observed once per forward."""
        n = len(event.tokens)
        if n:
            self.generated.inc(n)
        if event.step >= 0:
            self.step_tokens.observe(n)
            if event.step != self._last_step:
                self._last_step = event.step
                self.step_time.observe(event.step_time_s)

    def finished(self, reason: str, prompt_tokens: int, latency_s: float, ttft_s: float | None) -> None:
        """Account one finished request (reason: stop, length, cancelled, error)."""
        self.requests.labels(reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.latency.observe(latency_s)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _EngineCollector:
    """Gauges and counters read from Engine.stats() when scraped."""

    def __init__(self, stats, draining):
        self.stats, self.draining = stats, draining

    def describe(self):
        return []

    def collect(self):
        s = self.stats()
        slots = max(1, int(s.get("slots", 1)))
        for name, doc, value in (
                ("apd_queue_length", "Requests waiting for a slot", s.get("queue_length", 0)),
                ("apd_running_requests", "Requests decoding in a slot", s.get("running", 0)),
                ("apd_slots", "Decoding slots (--max-batch-size)", slots),
                ("apd_slot_occupancy", "Fraction of the slots in use", s.get("running", 0) / slots),
                ("apd_draining", "1 while the server drains (SIGTERM)", int(bool(self.draining())))):
            yield GaugeMetricFamily(name, doc, value=value)
        for name, doc, key in (("apd_engine_steps", "Steady steps the engine ran", "steps"),
                               ("apd_engine_forwards", "Forwards the engine ran (joins included)", "forwards")):
            yield CounterMetricFamily(name, doc, value=s.get(key, 0))
