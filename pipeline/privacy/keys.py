"""Secret keys: per-device noise keys and device pseudonyms, from a key file or a KMS.

Two independent master secrets, each a set of versioned keys with one active version:

* ``noise``: per-device noise key ``HMAC-SHA256(master, "biopriv/noise/1" NUL device_id)``; the
  release keystream is derived from it (:mod:`pipeline.privacy.noise`). Rotation adds a version;
  old versions stay so that replays of already-released windows reproduce their noise.
* ``pseudonym``: ``HMAC-SHA256(master, "biopriv/pseudonym/1" NUL device_id)``, first 16 bytes in
  hex (32 characters). Stable across restarts; changes only on explicit pseudonym rotation.

Key material is never logged: ``repr`` shows the path and key ids only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.errors import PrivacyError

log = logging.getLogger(__name__)

FORMAT = "biopriv-keys/1"
KINDS = ("noise", "pseudonym")
_NOISE_LABEL = b"biopriv/noise/1\x00"
_PSEUDO_LABEL = b"biopriv/pseudonym/1\x00"


@runtime_checkable
class KeyProvider(Protocol):
    """What the privacy engine needs from a key store; a KMS client can implement it."""

    def noise_key(self, device_id: str) -> tuple[str, bytes]:
        """``(key_id, 32-byte key)``: the active per-device noise key."""
        ...

    def noise_key_version(self, device_id: str, key_id: str) -> bytes | None:
        """The per-device noise key of version ``key_id``, or None if it was retired."""
        ...

    def pseudonym(self, device_id: str) -> str:
        """Keyed, stable pseudonym of ``device_id`` (hex)."""
        ...


class KeyRing:
    """In-memory implementation of :class:`KeyProvider` over master secrets.

    Parameters
    ----------
    noise, pseudonym : dict of str to bytes
        Key id -> 32-byte master secret.
    active_noise, active_pseudonym : str
        The ids used for new releases / pseudonyms.
    path : Path or None
        Where the keys came from (shown by ``repr``), None when ephemeral.
    """

    def __init__(
        self,
        noise: dict[str, bytes],
        pseudonym: dict[str, bytes],
        active_noise: str,
        active_pseudonym: str,
        path: Path | None = None,
    ) -> None:
        for kind, keys, active in (("noise", noise, active_noise), ("pseudonym", pseudonym, active_pseudonym)):
            if active not in keys:
                raise PrivacyError(f"active {kind} key {active!r} is not among the key ids {sorted(keys)}")
            for kid, secret in keys.items():
                if len(secret) < 32:
                    raise PrivacyError(f"{kind} key {kid!r} must have at least 32 bytes, got {len(secret)}")
        self._noise = dict(noise)
        self._pseudo = dict(pseudonym)
        self.active_noise = active_noise
        self.active_pseudonym = active_pseudonym
        self.path = path
        self._device_cache: dict[tuple[str, str], bytes] = {}
        self._pseudo_cache: dict[str, str] = {}

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "ephemeral"
        return f"KeyRing({where}, noise={sorted(self._noise)} active {self.active_noise!r}, pseudonym active {self.active_pseudonym!r})"

    @classmethod
    def generate(cls, path: Path | None = None) -> KeyRing:
        """Fresh random keys (``secrets.token_bytes``), version ids ``n1`` and ``p1``."""
        return cls({"n1": secrets.token_bytes(32)}, {"p1": secrets.token_bytes(32)}, "n1", "p1", path)

    def noise_key(self, device_id: str) -> tuple[str, bytes]:
        key = self.noise_key_version(device_id, self.active_noise)
        assert key is not None
        return self.active_noise, key

    def noise_key_version(self, device_id: str, key_id: str) -> bytes | None:
        cached = self._device_cache.get((key_id, device_id))
        if cached is not None:
            return cached
        master = self._noise.get(key_id)
        if master is None:
            return None
        key = hmac.digest(master, _NOISE_LABEL + device_id.encode(), hashlib.sha256)
        if len(self._device_cache) >= 100_000:
            self._device_cache.clear()
        self._device_cache[(key_id, device_id)] = key
        return key

    def pseudonym(self, device_id: str) -> str:
        cached = self._pseudo_cache.get(device_id)
        if cached is None:
            master = self._pseudo[self.active_pseudonym]
            cached = hmac.digest(master, _PSEUDO_LABEL + device_id.encode(), hashlib.sha256)[:16].hex()
            if len(self._pseudo_cache) >= 100_000:
                self._pseudo_cache.clear()
            self._pseudo_cache[device_id] = cached
        return cached

    def rotated(self, kind: str, retire_old: bool = False) -> KeyRing:
        """A copy with a new active ``kind`` key (``noise`` or ``pseudonym``).

        Old noise keys are kept unless ``retire_old``: replays of windows released under them
        then reproduce their noise instead of being suppressed.
        """
        if kind not in KINDS:
            raise PrivacyError(f"kind must be one of {KINDS}, got {kind!r}")
        keys = dict(self._noise if kind == "noise" else self._pseudo)
        prefix = "n" if kind == "noise" else "p"
        new_id = f"{prefix}{1 + max(int(k[1:]) for k in keys if k[1:].isdigit())}" if keys else f"{prefix}1"
        if retire_old:
            keys = {}
        keys[new_id] = secrets.token_bytes(32)
        if kind == "noise":
            return KeyRing(keys, self._pseudo, new_id, self.active_pseudonym, self.path)
        return KeyRing(self._noise, keys, self.active_noise, new_id, self.path)

    def to_mapping(self) -> dict[str, Any]:
        """The key file content (contains secrets: write it only with :func:`save_keys`)."""
        return {
            "format": FORMAT,
            "noise": {"active": self.active_noise, "keys": {k: v.hex() for k, v in self._noise.items()}},
            "pseudonym": {"active": self.active_pseudonym, "keys": {k: v.hex() for k, v in self._pseudo.items()}},
        }

    @classmethod
    def from_mapping(cls, data: Any, path: Path | None = None) -> KeyRing:
        """Parse key-file content; errors name the field, never the secret."""
        where = f" in {str(path)!r}" if path else ""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PrivacyError(f"key file{where} must be a JSON object with format {FORMAT!r}")
        parsed: dict[str, tuple[dict[str, bytes], str]] = {}
        for kind in KINDS:
            section = data.get(kind)
            if not isinstance(section, dict) or not isinstance(section.get("keys"), dict) or "active" not in section:
                raise PrivacyError(f"key file{where}: section {kind!r} needs 'active' and 'keys'")
            keys: dict[str, bytes] = {}
            for kid, hexkey in section["keys"].items():
                try:
                    keys[str(kid)] = bytes.fromhex(hexkey)
                except (TypeError, ValueError):
                    raise PrivacyError(f"key file{where}: {kind} key {kid!r} is not hex") from None
            parsed[kind] = (keys, str(section["active"]))
        return cls(parsed["noise"][0], parsed["pseudonym"][0], parsed["noise"][1], parsed["pseudonym"][1], path)


def save_keys(ring: KeyRing, path: str | Path) -> None:
    """Write ``ring`` atomically to ``path`` with permissions 0600."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(ring.to_mapping(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_keys(path: str | Path | None) -> KeyRing:
    """Load the key file at ``path``; create it (mode 0600) with fresh keys if it does not exist.

    ``None`` gives ephemeral in-memory keys (logged as a warning): pseudonyms and noise are then
    not stable across restarts, so replays after a restart are suppressed instead of reproduced.

    Raises
    ------
    PrivacyError
        If the file is readable by group or others, or malformed.
    """
    if path is None:
        log.warning("no key file given: using ephemeral keys (pseudonyms change on restart)")
        return KeyRing.generate()
    p = Path(path)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        ring = KeyRing.generate(p)
        save_keys(ring, p)
        log.info("created key file %s (mode 0600)", p)
        return ring
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise PrivacyError(
            f"key file {str(p)!r} must not be accessible by group or others: mode is {mode:04o}, expected 0600"
        )
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PrivacyError(f"cannot read key file {str(p)!r}: {type(exc).__name__}") from None
    return KeyRing.from_mapping(data, p)


def rotate_keys(path: str | Path, kind: str, retire_old: bool = False) -> KeyRing:
    """Rotate the ``kind`` key of the key file at ``path`` in place; returns the new ring."""
    ring = load_keys(path).rotated(kind, retire_old=retire_old)
    save_keys(ring, path)
    return ring
