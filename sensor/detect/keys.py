"""The HMAC key, redaction and fingerprints: how findings are reported without re-leaking them.

Everything that leaves the scanner (samples, correlation ids) carries HMAC-SHA256 fingerprints
under the operator's key. Inside one scan, distinct values are counted by Python's ``hash()``:
SipHash-1-3 keyed with a per-process random secret (PEP 456), ~12x cheaper than keyed BLAKE2b and
never written anywhere, so it cannot correlate anything outside the process.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_ENV = "DLP_SENSOR_HMAC_KEY"


def default_state_dir() -> Path:
    return Path(os.environ.get("DLP_SENSOR_STATE_DIR")
                or os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"),
                                "dlp-sensor"))


def load_key(configured: str | None = None, state_dir: Path | None = None) -> bytes:
    """Key from config (hex), else $DLP_SENSOR_HMAC_KEY (hex), else generated once into the state dir.

    The stored key is written atomically (0600, fsynced) and refused when shorter than 16 bytes or
    not hex: a 0-byte ``hmac.key`` left by a full disk would make every fingerprint brute-forceable,
    so it stops the start (StateError naming the file) instead of being used or silently replaced
    (a new key would also orphan every keyed fingerprint already in the registry and the alerts)."""
    from sensor.enforce.statefiles import StateError, load_or_create_secret, private_dir

    for source, value in (("config hmac_key", configured), (KEY_ENV, os.environ.get(KEY_ENV))):
        if value:
            try:
                key = bytes.fromhex(value.strip())
            except ValueError:
                raise ValueError(f"{source}: must be hex (e.g. `openssl rand -hex 32`)") from None
            if len(key) < 16:
                raise ValueError(f"{source}: must be at least 16 bytes (32 hex digits)")
            return key
    sd = private_dir(state_dir or default_state_dir())
    path = sd / "hmac.key"
    fix = ("restore the key (fingerprints in earlier alerts and content takedowns depend on it), or remove the "
           "file to generate a new one")
    text = load_or_create_secret(path, "HMAC key", lambda: secrets.token_bytes(32).hex(), fix)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise StateError(f"HMAC key {path}: not hex; {fix}") from None
    if len(key) < 16:
        raise StateError(f"HMAC key {path}: {len(key)} bytes, shorter than 16; {fix}")
    return key


def content_fingerprint(key: bytes, head: bytes) -> str:
    """Keyed hash of a body's first bytes: the same file under another URL has the same one (fleet-wide,
    when the fleet shares the key)."""
    return hashlib.blake2b(head, key=key[:64], digest_size=16).hexdigest()


def fingerprint(key: bytes, value: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, value, "sha256").hexdigest()[:24]


def redact(value: bytes) -> str:
    """Mask every letter and digit except the last few (at most 4) so a SOC can tell values apart."""
    s = value.decode("utf-8", "replace").replace("\t", " ").replace("\r", " ").replace("\n", " ")
    alnum = sum(ch.isalnum() for ch in s)
    keep = min(4, alnum // 3)
    out = []
    for ch in reversed(s):
        if ch.isalnum():
            out.append(ch if keep > 0 else "*")
            keep -= 1
        else:
            out.append(ch)
    return "".join(reversed(out))
