"""Prometheus metrics of the daemon (prefix ``voxguard_``, in their own registry),
served at ``GET /metrics``.  The names are listed in ``docs/operations.md``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from voxguard.protocol import CLONE_LEVELS, ERRORS, EVENT_TYPES

from .alerts import ALERT_KINDS
from .auth import ENDPOINTS

REFUSAL_REASONS = ("missing_token", "invalid_token", "missing_scope")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DaemonMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.active_streams = Gauge("voxguard_active_streams", "Streams currently open", registry=r)
        self.streams = Counter("voxguard_streams_total", "Streams ended, by how they ended", ["outcome"], registry=r)
        self.audio_seconds = Counter("voxguard_audio_seconds_total", "Seconds of audio received", registry=r)
        self.voiced_seconds = Counter("voxguard_voiced_seconds_total",
                                      "Seconds of received audio the VAD classified as speech "
                                      "(speech ratio = voiced / audio)", registry=r)
        self.windows_embedded = Counter("voxguard_windows_embedded_total", "Windows embedded", registry=r)
        self.windows_dropped = Counter("voxguard_windows_dropped_total",
                                       "Windows dropped by the per-stream overload policy", registry=r)
        self.batch_size = Histogram("voxguard_batch_size", "Windows per embedder batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.embedding_seconds = Histogram("voxguard_embedding_seconds", "Embedder time per batch",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.search_seconds = Histogram("voxguard_search_seconds",
                                        "Index search and clone assessment time per batch",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.event_latency = Histogram("voxguard_event_latency_seconds",
                                       "Arrival of the audio completing a window -> its identity event sent",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("voxguard_queue_depth", "Windows waiting for the embedder", registry=r)
        self.events = Counter("voxguard_events_total", "Events sent, by type", ["type"], registry=r)
        self.clone_suspicions = Counter("voxguard_clone_suspicions_total",
                                        "Windows with clone suspicion, by level", ["level"], registry=r)
        self.cm_checks = Counter("voxguard_countermeasure_checks_total",
                                 "Countermeasure checks of voiced contexts, by outcome (ok, failed, skipped: "
                                 "superseded by the track's next check under load)", ["outcome"], registry=r)
        self.cm_seconds = Histogram("voxguard_countermeasure_seconds", "Countermeasure model time per batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.cm_audio_seconds = Counter("voxguard_countermeasure_audio_seconds_total",
                                        "Seconds of voiced audio the countermeasure checked (coverage = this / "
                                        "voxguard_voiced_seconds_total)", registry=r)
        self.cm_queue_depth = Gauge("voxguard_countermeasure_queue_depth", "Countermeasure checks waiting",
                                    registry=r)
        self.errors = Counter("voxguard_errors_total", "Streams ended by an error, by code", ["code"], registry=r)
        self.reloads = Counter("voxguard_reloads_total", "Store/index reloads, by result", ["result"], registry=r)
        self.monitor_subscribers = Gauge("voxguard_monitor_subscribers", "Connected /v1/monitor subscribers",
                                         registry=r)
        self.monitor_dropped = Counter("voxguard_monitor_events_dropped_total",
                                       "Events dropped from full monitor queues (oldest first)", registry=r)
        self.alerts = Counter("voxguard_alerts_total", "Alerts raised for the webhooks, by kind", ["kind"],
                              registry=r)
        self.webhook_alerts = Counter("voxguard_webhook_alerts_total",
                                      "Alert deliveries per webhook URL, by result (sent, failed after retries, "
                                      "dropped from a full queue)", ["result"], registry=r)
        self.store_errors = Counter("voxguard_store_errors_total",
                                    "Failures to read or reload the store while following it (each retry counts)",
                                    registry=r)
        self.store_degraded = Gauge("voxguard_store_degraded",
                                    "1 while the store cannot be read (streams are served from the loaded index)",
                                    registry=r)
        self.http_refusals = Counter("voxguard_http_refusals_total",
                                     "Requests refused by the token gate, by endpoint (path template) and reason "
                                     "(missing_token 401, invalid_token 403, missing_scope 403)",
                                     ["endpoint", "reason"], registry=r)
        for ep in ENDPOINTS:
            if ep.scope is not None:
                for reason in REFUSAL_REASONS:
                    self.http_refusals.labels(ep.name, reason)
        self.model = Info("voxguard_model", "The embedder in use", registry=r)
        self.index = Info("voxguard_index", "The index in use", registry=r)
        self.index_speakers = Gauge("voxguard_index_speakers", "Enrolled speakers in the index", registry=r)
        self.index_samples = Gauge("voxguard_index_samples", "Samples (genuine and clone) in the index", registry=r)
        self.index_revision = Gauge("voxguard_index_revision", "Store revision the index was built from",
                                    registry=r)
        # export every known label value at 0 from the start: a series born at its first
        # increment hides that increment from rate()/increase() (and from the alerts)
        for counter, values in ((self.events, EVENT_TYPES), (self.clone_suspicions, CLONE_LEVELS),
                                (self.errors, ERRORS), (self.reloads, ("ok", "failed")),
                                (self.alerts, ALERT_KINDS), (self.webhook_alerts, ("sent", "failed", "dropped")),
                                (self.streams, ("stop", "shutdown", "disconnected", "error", "closed"))):
            for value in values:
                counter.labels(value)

    def set_model(self, identity, device: str) -> None:
        self.model.info({"embedder": identity.name, "dim": str(identity.dim), "version": identity.version,
                         "device": str(device)})

    def set_index(self, info: dict) -> None:
        self.index.info({k: str(info.get(k)) for k in ("store", "store_id", "revision", "scorer", "on_gpu")})
        self.index_speakers.set(info["enrolled_speakers"])
        self.index_samples.set(info["samples"])
        self.index_revision.set(info["revision"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
