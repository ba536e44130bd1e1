"""What the admin API, the fleet link, the Kafka mirror and the unscanned-alert aggregator may use
of a running sensor.

They are handed the running ``sensor.runtime.Sensor`` but see it through these protocols: its
stores, metrics and current configuration (read at each use: a reload swaps it), never the
runtime module itself, so no import runs back up the layers from enforce/, stream/ or alerts/ to
runtime.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sensor.alerts.dispatch import Dispatcher
    from sensor.config import Config
    from sensor.enforce.ledger import Ledger
    from sensor.enforce.registry import Registry
    from sensor.metrics import Metrics


class SensorState(Protocol):
    """The fleet link's and the mirror's view: the current config, the stores, the metrics."""
    config: "Config"
    registry: "Registry"
    ledger: "Ledger"
    metrics: "Metrics"
    key: bytes


class AdminState(SensorState, Protocol):
    """The admin API's view: the state plus the bearer token it checks."""
    token: str


class Ruleset(Protocol):
    """What an alert names of the detector: the generation of pack and policy it was raised under."""
    generation: str


class AlertingState(Protocol):
    """The unscanned-alert aggregator's view (``sensor.alerts.unscanned``): the current config (its
    ``source_ip``), the HMAC key, the detector's generation and the dispatcher the alerts go to."""
    config: "Config"
    key: bytes
    detector: Ruleset
    dispatcher: "Dispatcher"
