"""Enforcement: the durable takedown registry and the exposure ledger, shared by every tap."""
