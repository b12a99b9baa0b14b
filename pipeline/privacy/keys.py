"""Secret keys: per-device noise keys, pseudonyms, and the state key, from key files or a KMS.

Three independent secrets, each a set of versioned keys with one active version:

* ``noise``: per-device noise key ``HMAC-SHA256(master, "biopriv/noise/1" NUL device_id)``; the
  release keystream is derived from it (:mod:`pipeline.privacy.noise`). Rotation adds a version;
  the old one stays until ``retire_at`` (by default :data:`NOISE_RETIRE_AFTER_S` after the
  rotation: long enough for every device to move to the new key at its next UTC day and for any
  replay of a window noised under the old key), then it is dropped, so a leaked key file does not
  expose the whole history.
* ``pseudonym``: ``HMAC-SHA256(master, "biopriv/pseudonym/1" NUL device_id)``, first 16 bytes in
  hex (32 characters). Stable across restarts; changes only on explicit pseudonym rotation. The
  same master keys the release ids (:meth:`KeyRing.tag`).
* ``state``: encrypts the worker's durable state records (ChaCha20-Poly1305), so that a reader of
  the state topic learns neither ledger contents nor anything that links a device to its releases.
  A key file without a ``state`` section derives it from the active pseudonym master.

The secrets may live in one file or in several (``--key-file`` plus ``--pseudonym-key-file``):
each file holds some of the sections, and together they must hold ``noise`` and ``pseudonym``.
Key material is never logged: ``repr`` shows paths, key ids and fingerprints only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.errors import PrivacyError

log = logging.getLogger(__name__)

FORMAT = "biopriv-keys/1"
KINDS = ("noise", "pseudonym", "state")
_NOISE_LABEL = b"biopriv/noise/1\x00"
_PSEUDO_LABEL = b"biopriv/pseudonym/1\x00"
_TAG_LABEL = b"biopriv/tag/1\x00"
_STATE_LABEL = b"biopriv/state/1"
_FINGERPRINT_LABEL = b"biopriv/fingerprint/1"

#: Default time a rotated-out noise key is kept, s: a device moves to the new key at its next UTC
#: day (at most 1 day), and a replay needs the key of a window for at most the ledger's memory.
NOISE_RETIRE_AFTER_S = 2 * 86400.0


@runtime_checkable
class KeyProvider(Protocol):
    """What the privacy engine needs from a key store; a KMS client can implement it."""

    def noise_key(self, device_id: str) -> tuple[str, bytes]:
        """``(key_id, 32-byte key)``: the active per-device noise key."""
        ...

    def noise_key_version(self, device_id: str, key_id: str) -> bytes | None:
        """The per-device noise key of version ``key_id``, or None if unknown or retired."""
        ...

    def pseudonym(self, device_id: str) -> str:
        """Keyed, stable pseudonym of ``device_id`` (hex)."""
        ...

    def tag(self, device_id: str, data: bytes) -> bytes:
        """A keyed 32-byte tag of ``data`` for ``device_id`` (release ids), stable like the pseudonym."""
        ...

    def state_key(self) -> tuple[str, bytes]:
        """``(key_id, 32-byte key)`` sealing new state records."""
        ...

    def state_key_version(self, key_id: str) -> bytes | None:
        """The state key ``key_id`` (to open older records), or None."""
        ...

    def fingerprints(self) -> dict[str, str]:
        """Public fingerprints of every key (``"<kind>:<id>" -> hex``), compared across workers."""
        ...


class KeyRing:
    """In-memory implementation of :class:`KeyProvider` over master secrets.

    Parameters
    ----------
    noise, pseudonym : dict of str to bytes
        Key id -> master secret (at least 32 bytes).
    active_noise, active_pseudonym : str
        The ids used for new releases / pseudonyms.
    path : Path or None
        Where the keys came from (shown by ``repr``), None when ephemeral.
    state : dict of str to bytes, optional
        State encryption keys; derived from the pseudonym master when absent.
    active_state : str, optional
    retire_at : dict of str to float, optional
        Noise key id -> Unix time after which that (non-active) key is no longer used.
    """

    def __init__(
        self,
        noise: dict[str, bytes],
        pseudonym: dict[str, bytes],
        active_noise: str,
        active_pseudonym: str,
        path: Path | None = None,
        *,
        state: dict[str, bytes] | None = None,
        active_state: str | None = None,
        retire_at: dict[str, float] | None = None,
    ) -> None:
        if not state:
            state = {"s0": hmac.digest(pseudonym.get(active_pseudonym, b"\x00" * 32), _STATE_LABEL, hashlib.sha256)}
            active_state = "s0"
        assert active_state is not None
        for kind, keys, active in (
            ("noise", noise, active_noise), ("pseudonym", pseudonym, active_pseudonym), ("state", state, active_state)
        ):
            if active not in keys:
                raise PrivacyError(f"active {kind} key {active!r} is not among the key ids {sorted(keys)}")
            for kid, secret in keys.items():
                if len(secret) < 32:
                    raise PrivacyError(f"{kind} key {kid!r} must have at least 32 bytes, got {len(secret)}")
        self._noise = dict(noise)
        self._pseudo = dict(pseudonym)
        self._state = dict(state)
        self.active_noise = active_noise
        self.active_pseudonym = active_pseudonym
        self.active_state = active_state
        self.retire_at = {k: float(v) for k, v in (retire_at or {}).items() if k in self._noise and k != active_noise}
        self.path = path
        self._device_cache: dict[tuple[str, str], bytes] = {}
        self._pseudo_cache: dict[str, str] = {}
        self._tag_key = hmac.digest(self._pseudo[active_pseudonym], _TAG_LABEL, hashlib.sha256)

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "ephemeral"
        return (
            f"KeyRing({where}, noise={sorted(self._noise)} active {self.active_noise!r}, "
            f"pseudonym active {self.active_pseudonym!r}, state active {self.active_state!r})"
        )

    @classmethod
    def generate(cls, path: Path | None = None) -> KeyRing:
        """Fresh random keys (``secrets.token_bytes``), version ids ``n1``, ``p1`` and ``s1``."""
        return cls(
            {"n1": secrets.token_bytes(32)}, {"p1": secrets.token_bytes(32)}, "n1", "p1", path,
            state={"s1": secrets.token_bytes(32)}, active_state="s1",
        )

    # ------------------------------------------------------------------ noise
    def noise_key(self, device_id: str) -> tuple[str, bytes]:
        key = self.noise_key_version(device_id, self.active_noise)
        assert key is not None
        return self.active_noise, key

    def noise_key_version(self, device_id: str, key_id: str) -> bytes | None:
        until = self.retire_at.get(key_id)
        if until is not None and time.time() >= until:
            return None
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

    def usable_noise_keys(self) -> list[str]:
        """Noise key ids that are neither unknown nor retired (now)."""
        now = time.time()
        return sorted(k for k in self._noise if self.retire_at.get(k, now + 1) > now)

    # ------------------------------------------------------------------ pseudonyms and tags
    def pseudonym(self, device_id: str) -> str:
        cached = self._pseudo_cache.get(device_id)
        if cached is None:
            master = self._pseudo[self.active_pseudonym]
            cached = hmac.digest(master, _PSEUDO_LABEL + device_id.encode(), hashlib.sha256)[:16].hex()
            if len(self._pseudo_cache) >= 100_000:
                self._pseudo_cache.clear()
            self._pseudo_cache[device_id] = cached
        return cached

    def tag(self, device_id: str, data: bytes) -> bytes:
        return hmac.digest(self._tag_key, device_id.encode() + b"\x00" + data, hashlib.sha256)

    # ------------------------------------------------------------------ state
    def state_key(self) -> tuple[str, bytes]:
        """``(key_id, 32-byte key)`` that encrypts new state records."""
        return self.active_state, self._state[self.active_state][:32]

    def state_key_version(self, key_id: str) -> bytes | None:
        """The state key ``key_id`` (to decrypt older records), or None."""
        key = self._state.get(key_id)
        return None if key is None else key[:32]

    # ------------------------------------------------------------------ fingerprints
    def fingerprints(self) -> dict[str, str]:
        """A short public fingerprint of every key, ``"<kind>:<id>" -> 16 hex``: workers of one
        group compare them (no secret can be learned from a fingerprint)."""
        out = {}
        for kind, keys in (("noise", self._noise), ("pseudonym", self._pseudo), ("state", self._state)):
            for kid, secret in keys.items():
                out[f"{kind}:{kid}"] = hmac.digest(secret, _FINGERPRINT_LABEL, hashlib.sha256)[:8].hex()
        return out

    def active_ids(self) -> dict[str, str]:
        return {"noise": self.active_noise, "pseudonym": self.active_pseudonym, "state": self.active_state}

    # ------------------------------------------------------------------ rotation
    def rotated(self, kind: str, retire_old: bool = False, retire_after_s: float = NOISE_RETIRE_AFTER_S) -> KeyRing:
        """A copy with a new active ``kind`` key (``noise``, ``pseudonym`` or ``state``).

        The previous noise key stays usable for ``retire_after_s`` (then :meth:`noise_key_version`
        returns None for it), unless ``retire_old`` drops it at once. Old state keys stay (older
        state records need them); old pseudonym keys are dropped with ``retire_old``.
        """
        if kind not in KINDS:
            raise PrivacyError(f"kind must be one of {KINDS}, got {kind!r}")
        source = {"noise": self._noise, "pseudonym": self._pseudo, "state": self._state}[kind]
        keys = dict(source)
        prefix = kind[0]
        new_id = f"{prefix}{1 + max((int(k[1:]) for k in keys if k[1:].isdigit()), default=0)}"
        retire = dict(self.retire_at)
        if retire_old:
            keys = {}
        elif kind == "noise":
            retire[self.active_noise] = time.time() + retire_after_s
        keys[new_id] = secrets.token_bytes(32)
        parts: dict[str, Any] = {
            "noise": self._noise, "pseudonym": self._pseudo, "state": self._state, **{kind: keys},
        }
        active = {**self.active_ids(), kind: new_id}
        return KeyRing(
            parts["noise"], parts["pseudonym"], active["noise"], active["pseudonym"], self.path,
            state=parts["state"], active_state=active["state"], retire_at=retire,
        )

    def retired(self) -> KeyRing:
        """A copy without the noise keys whose ``retire_at`` has passed."""
        now = time.time()
        noise = {k: v for k, v in self._noise.items() if self.retire_at.get(k, now + 1) > now}
        return KeyRing(
            noise, self._pseudo, self.active_noise, self.active_pseudonym, self.path,
            state=self._state, active_state=self.active_state, retire_at=self.retire_at,
        )

    # ------------------------------------------------------------------ files
    def to_mapping(self, kinds: Sequence[str] = KINDS) -> dict[str, Any]:
        """Key-file content holding ``kinds`` (contains secrets: write it only with :func:`save_keys`)."""
        out: dict[str, Any] = {"format": FORMAT}
        for kind in kinds:
            keys = {"noise": self._noise, "pseudonym": self._pseudo, "state": self._state}[kind]
            section: dict[str, Any] = {"active": self.active_ids()[kind], "keys": {k: v.hex() for k, v in keys.items()}}
            if kind == "noise" and self.retire_at:
                section["retire_at"] = dict(self.retire_at)
            out[kind] = section
        return out

    @classmethod
    def from_mappings(cls, docs: Sequence[tuple[Any, Path | None]]) -> KeyRing:
        """Parse the content of one or more key files; errors name the file and field, never a secret."""
        parsed: dict[str, tuple[dict[str, bytes], str, dict[str, float]]] = {}
        paths = [p for _, p in docs if p is not None]
        for data, path in docs:
            where = f" in {str(path)!r}" if path else ""
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise PrivacyError(f"key file{where} must be a JSON object with format {FORMAT!r}")
            unknown = sorted(set(data) - {"format", *KINDS})
            if unknown:
                raise PrivacyError(f"key file{where}: unknown section(s) {unknown}; allowed are {list(KINDS)}")
            for kind in KINDS:
                section = data.get(kind)
                if section is None:
                    continue
                if kind in parsed:
                    raise PrivacyError(f"key file{where}: section {kind!r} is given by more than one key file")
                if not isinstance(section, dict) or not isinstance(section.get("keys"), dict) or "active" not in section:
                    raise PrivacyError(f"key file{where}: section {kind!r} needs 'active' and 'keys'")
                keys: dict[str, bytes] = {}
                for kid, hexkey in section["keys"].items():
                    try:
                        keys[str(kid)] = bytes.fromhex(hexkey)
                    except (TypeError, ValueError):
                        raise PrivacyError(f"key file{where}: {kind} key {kid!r} is not hex") from None
                retire = section.get("retire_at", {})
                if not isinstance(retire, dict) or not all(isinstance(v, (int, float)) for v in retire.values()):
                    raise PrivacyError(f"key file{where}: {kind}.retire_at must map key ids to Unix times")
                parsed[kind] = (keys, str(section["active"]), {str(k): float(v) for k, v in retire.items()})
        for kind in ("noise", "pseudonym"):
            if kind not in parsed:
                raise PrivacyError(f"no key file holds the {kind!r} section (files: {[str(p) for p in paths]})")
        state = parsed.get("state")
        return cls(
            parsed["noise"][0], parsed["pseudonym"][0], parsed["noise"][1], parsed["pseudonym"][1],
            paths[0] if paths else None,
            state=state[0] if state else None, active_state=state[1] if state else None,
            retire_at=parsed["noise"][2],
        )

    @classmethod
    def from_mapping(cls, data: Any, path: Path | None = None) -> KeyRing:
        """Parse one key file's content."""
        return cls.from_mappings([(data, path)])


def save_keys(ring: KeyRing, path: str | Path, kinds: Sequence[str] = KINDS) -> None:
    """Write the ``kinds`` sections of ``ring`` atomically to ``path`` with permissions 0600."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(ring.to_mapping(kinds), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_key_file(p: Path) -> Any:
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise PrivacyError(
            f"key file {str(p)!r} must not be accessible by group or others: mode is {mode:04o}, expected 0600 or 0400"
        )
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PrivacyError(f"cannot read key file {str(p)!r}: {type(exc).__name__}") from None


def load_keys(path: str | Path | None, *more: str | Path) -> KeyRing:
    """Load the key file at ``path`` (plus ``more`` files holding other sections).

    A single ``path`` that does not exist is created (mode 0600) with fresh keys. ``None`` gives
    ephemeral in-memory keys (logged as a warning): pseudonyms and noise are then not stable
    across restarts. Noise keys past their ``retire_at`` are not used (:meth:`KeyRing.noise_key_version`).

    Raises
    ------
    PrivacyError
        If a file is readable by group or others, malformed, or a section is missing.
    """
    if path is None:
        log.warning("no key file given: using ephemeral keys (pseudonyms change on restart)")
        return KeyRing.generate()
    p = Path(path)
    if not more and not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        ring = KeyRing.generate(p)
        save_keys(ring, p)
        log.info("created key file %s (mode 0600)", p)
        return ring
    files = [p, *(Path(m) for m in more)]
    for f in files:
        if not f.exists():
            raise PrivacyError(f"key file {str(f)!r} does not exist")
    ring = KeyRing.from_mappings([(_read_key_file(f), f) for f in files])
    retired = sorted(set(ring._noise) - set(ring.usable_noise_keys()))
    if retired:
        log.info("noise key(s) %s are retired (past retire_at) and will not be used", retired)
    return ring


def rotate_keys(path: str | Path, kind: str, retire_old: bool = False, retire_after_s: float = NOISE_RETIRE_AFTER_S) -> KeyRing:
    """Rotate the ``kind`` key of the key file at ``path`` in place; returns the new ring."""
    data = _read_key_file(Path(path)) if Path(path).exists() else None
    kinds = [k for k in KINDS if data is None or k in data]
    ring = load_keys(path) if data is None or {"noise", "pseudonym"} <= set(data) else None
    if ring is None:
        raise PrivacyError(f"key file {str(path)!r} holds only {kinds}: rotate with all key files loaded")
    if kind not in kinds:
        raise PrivacyError(f"key file {str(path)!r} has no {kind!r} section (it holds {kinds})")
    new = ring.rotated(kind, retire_old=retire_old, retire_after_s=retire_after_s)
    save_keys(new, path, kinds if "state" in kinds else [*kinds, "state"] if kind == "state" else kinds)
    return new
