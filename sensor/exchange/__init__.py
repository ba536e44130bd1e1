"""Decide → act for one exchange, the same for every tap: routing, the resource key, the client's
identity, the content fingerprint, hold-back, the scan, trip → takedown, accounting. Taps translate
protocol to and from this package and nothing else."""
