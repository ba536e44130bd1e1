"""SOC alerts: one schema (ECS-shaped, OCSF 2006 mapping), a durable spool, and the sinks."""
