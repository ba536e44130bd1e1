"""The inline reverse proxy (the sidecar)."""
