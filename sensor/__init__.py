"""dlp-sensor: streaming data-loss-prevention sensor (see DESIGN.md for the map)."""

__version__ = "0.1.0"
