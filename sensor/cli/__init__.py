"""The ``dlp-sensor`` command."""
