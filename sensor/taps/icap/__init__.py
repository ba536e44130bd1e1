"""The ICAP RESPMOD tap (squid, secure web gateways)."""
