"""Decoding: Content-Encoding stacks and containers, streamed, with hard limits.

Every stage is push-based (``write(data)`` / ``close()`` into a downstream sink) so that output is
produced in bounded pieces and a shared :class:`~sensor.decode.limits.Budget` can refuse a bomb
in the middle of a single input chunk.
"""
