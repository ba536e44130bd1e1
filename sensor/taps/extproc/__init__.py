"""The Envoy ext_proc tap (gRPC)."""
