"""Exact data match: recognise the operator's own protected rows from keyed hashes only.

``normalise`` turns a value of a field kind into one canonical spelling, ``indexfile`` writes and
reads the index (HMAC-SHA256 under the sensor key, truncated; no raw value), ``sources`` reads the
protected table, ``match`` counts EDM records during a scan.
"""
