"""The privacy engine: one call per window turns raw feature values into a private release.

:meth:`PrivacyEngine.privatize` takes a :class:`ReleaseRequest` and returns a
:class:`PrivateRelease` or a :class:`Suppression`. It

1. detects replays (window index at or below the last one seen for the device's stream and
   feature set) and answers them from the ledger without charging: a released window is
   regenerated bit-identically from its key version (and checked against the recorded keyed
   digest), a suppressed one is suppressed again;
2. suppresses windows that are ``late`` (too far behind the device's newest data), inside a
   ``ledger_missing`` guard (the device's ledger was lost: they may have been released under the
   lost lineage), or that the :class:`~pipeline.privacy.accountant.Accountant` cannot pay for
   (``budget_exhausted``): never published un-noised;
3. fixes the noise key of the window's UTC day, privatizes the vector with the cached
   :class:`~pipeline.privacy.vector.ReleasePlan`, noise drawn from the release's own ChaCha20
   keystream (bound to the window's place, the device's lineage and the window's content), and
   charges the ledger.

The device *header* (lineage, key of each day) must be durable before a release that depends on it
is published: :meth:`PrivacyEngine.take_unsaved_headers` says which devices' headers changed (the
worker writes them ahead, ``docs/operations.md``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import PrivacyError
from pipeline.features.spec import FeatureSpec
from pipeline.privacy.accountant import Accountant, Outcome, Suppressed, _cost_units
from pipeline.privacy.config import PrivacyConfig
from pipeline.privacy.keys import KeyProvider
from pipeline.privacy.noise import NoiseStream, identity_bytes
from pipeline.privacy.vector import ReleasedValues, ReleasePlan

_PLAN_CACHE_MAX = 256


#: ns per UTC day: noise keys are fixed per device and day.
DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """One window of one feature set of one device, to be privatized.

    Attributes
    ----------
    device_id, stream, feature_set : str
        Release identity (with ``window_index``); ``device_id`` is the privacy unit.
    window_index : int
        Strictly increasing per (device, stream, feature_set); an index at or below the last one
        seen is treated as a replay. Internal: never published.
    hop_s, length_s : float
        Window geometry in seconds (validated; accounting uses the capture span).
    start_ns, end_ns : int
        Capture time span of the window, ns since the Unix epoch; the w-event and period rules
        account on it.
    values : Mapping[str, float] or numpy.ndarray
        Raw feature values: a mapping feature name -> value, or a 1-D float array of length
        ``len(specs)`` in the order of ``specs`` (the fast path: no per-feature lookups). NaN
        (undefined for this window) is replaced by a public default inside the bounds (the
        midpoint; category 0) and noised like any value. Both forms give the same release.
    specs : Sequence[FeatureSpec]
        One per value. Pass the same (immutable) sequence object every time: the engine caches
        the compiled plan by its identity.
    content : bytes
        Canonical description of what the window holds (:meth:`pipeline.windows.Window.content_id`),
        bound into the noise identity with the capture span.
    epsilon : float or None
        Epsilon of this release instead of the configuration's (a study's per-report epsilon).
    """

    device_id: str
    stream: str
    feature_set: str
    window_index: int
    hop_s: float
    length_s: float
    start_ns: int
    end_ns: int
    values: Mapping[str, float] | np.ndarray
    specs: Sequence[FeatureSpec]
    content: bytes = b""
    epsilon: float | None = None


@dataclass(frozen=True, slots=True)
class PrivateRelease:
    """A privatized window, safe to publish.

    Attributes
    ----------
    release_id : str
        32 hex characters, keyed (``KeyProvider.tag``) over (device, stream, feature set, window
        index): stable across re-processing, meaningless without the keys.
    device : str
        The device's pseudonym (never its id).
    values : ReleasedValues
        Read-only mapping (``to_dict()``, ``.array``) of privatized values on each mechanism's grid; under the ``sample`` strategy only the k
        sampled features. Numeric values are unbiased estimates; binary and categorical values
        are the randomized category index (debias with ``estimate_frequency``).
    epsilon, delta : float
        Spent by this release (delta > 0 only with the Gaussian mechanism).
    mechanism : str
        The mechanisms used, joined by ``+`` (e.g. ``"piecewise+grr"``);
        ``feature_mechanisms`` and ``feature_epsilon`` give them per feature.
    strategy : str
        ``"split"`` or ``"sample"``.
    budget : dict
        Per accounting rule: ``epsilon``, ``spent``, ``remaining`` after this release (for
        operators; not published: it would reveal the device's other streams).
    key_id : str
        Version of the noise key used (no secret).
    plan : ReleasePlan
        The compiled plan (the public description of how each feature was noised).
    """

    release_id: str
    device: str
    stream: str
    feature_set: str
    window_index: int
    values: ReleasedValues
    epsilon: float
    delta: float
    mechanism: str
    strategy: str
    budget: dict[str, Any] = field(compare=False)
    key_id: str = ""
    feature_mechanisms: Mapping[str, str] = field(default_factory=dict, repr=False, compare=True)
    feature_epsilon: Mapping[str, float] = field(default_factory=dict, repr=False, compare=True)
    plan: ReleasePlan | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "plan"}
        out["values"] = self.values.to_dict()
        out["feature_mechanisms"] = dict(self.feature_mechanisms)
        out["feature_epsilon"] = dict(self.feature_epsilon)
        return out


@dataclass(frozen=True, slots=True)
class Suppression:
    """A window that is not released; ``event`` is JSON-able and holds no raw values."""

    release_id: str
    reason: str
    event: dict[str, Any] = field(compare=False)


class PrivacyEngine:
    """Privatizes releases for many devices and keeps their privacy ledger.

    Parameters
    ----------
    config : PrivacyConfig
        Validated configuration.
    keys : KeyProvider
        Noise keys and pseudonyms (:func:`~pipeline.privacy.keys.load_keys` or a KMS client).
    ledger_state : dict or None
        A previous :meth:`ledger_state`, to resume after a restart.
    """

    def __init__(self, config: PrivacyConfig, keys: KeyProvider, ledger_state: dict[str, Any] | None = None) -> None:
        if not isinstance(keys, KeyProvider):
            raise PrivacyError(
                f"keys must implement KeyProvider (noise_key, noise_key_version, pseudonym, tag), got {type(keys).__name__}"
            )
        self.config = config
        self._keys = keys
        self._acct = Accountant(config, ledger_state)
        self._plans: dict[tuple[str, int, float | None], tuple[Sequence[FeatureSpec], ReleasePlan]] = {}
        self._hmacs: dict[bytes, hmac.HMAC] = {}  # device noise key -> keyed HMAC state, to copy
        #: Counters: released, suppressed, replayed.
        self.stats = {"released": 0, "suppressed": 0, "replayed": 0}

    def __repr__(self) -> str:
        return f"PrivacyEngine(epsilon={self.config.epsilon}, keys={self._keys!r})"

    @property
    def keys(self) -> KeyProvider:
        return self._keys

    def plan(self, feature_set: str, specs: Sequence[FeatureSpec], epsilon: float | None = None) -> ReleasePlan:
        """The compiled (cached) plan of a feature set (``epsilon``: instead of the configuration's)."""
        key = (feature_set, id(specs), epsilon)
        hit = self._plans.get(key)
        if hit is not None and hit[0] is specs:
            return hit[1]
        cfg = self.config if epsilon is None else dataclasses.replace(self.config, epsilon=epsilon)
        plan = ReleasePlan(feature_set, specs, cfg)
        if len(self._plans) >= _PLAN_CACHE_MAX:
            self._plans.clear()
        self._plans[key] = (specs, plan)
        return plan

    # ------------------------------------------------------------------ durable state
    def ledger_state(self, devices: Iterable[str] | None = None) -> dict[str, Any]:
        """The durable ledger as plain JSON-able data (pass back as ``ledger_state``).

        ``devices``: only these devices' slices (cheap checkpoints of what changed).
        """
        return self._acct.state(devices)

    def with_ledger(self, ledger_state: dict[str, Any] | None) -> PrivacyEngine:
        """A new engine with this one's configuration and keys, restored from ``ledger_state``."""
        return PrivacyEngine(self.config, self._keys, ledger_state=ledger_state)

    def take_unsaved_headers(self) -> set[str]:
        """Devices whose header (lineage, day keys) changed and must be written ahead of their
        next published release."""
        return self._acct.take_unsaved_headers()

    def headers(self, devices: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Plain-data headers of ``devices`` (what the worker writes ahead)."""
        return self._acct.headers(devices)

    def set_header(self, device_id: str, header: dict[str, Any]) -> None:
        """Install a header read back from durable state."""
        self._acct.set_header(device_id, header)

    def has_ledger(self, device_id: str) -> bool:
        return self._acct.device(device_id) is not None

    def guard(self, device_id: str, until_ns: int) -> None:
        """Suppress the device's windows ending at or before ``until_ns`` (``ledger_missing``)."""
        self._acct.guard(device_id, until_ns)

    def guard_from_first(self, device_id: str, margin_ns: int) -> None:
        """Suppress (``ledger_missing``) the device's windows ending within ``margin_ns`` of the
        first window it asks to release: its ledger was lost, so windows around there may have
        been published under the lost lineage already."""
        self._acct.guard_from_first(device_id, margin_ns)

    def budget(self, device_id: str, start_ns: int, end_ns: int) -> dict[str, Any]:
        """Spent and remaining epsilon per rule for a device, as a release over the span would see it."""
        return self._acct.assess(device_id, start_ns, end_ns, 0.0)[1]

    def spent(self, device_id: str) -> dict[str, Any]:
        """The device's spending (lifetime, delta, periods), for operators."""
        return self._acct.spent(device_id)

    def devices(self) -> list[str]:
        return self._acct.devices()

    # ------------------------------------------------------------------ the hot path
    def privatize(self, req: ReleaseRequest) -> PrivateRelease | Suppression:
        """Privatize one window, or suppress it; see the module docstring for the order of checks.

        Raises
        ------
        PrivacyError
            If the request is malformed (values and specs disagree, bad window geometry).
        """
        _check_request(req)
        plan = self.plan(req.feature_set, req.specs, req.epsilon)
        if isinstance(req.values, np.ndarray):
            if req.values.shape != (plan.d,):
                raise PrivacyError(
                    f"{req.feature_set!r}: a value array must have shape ({plan.d},) in spec order, got {req.values.shape}"
                )
        elif len(req.values) != plan.d:
            extra = sorted(set(req.values) - set(plan.names))
            raise PrivacyError(
                f"{req.feature_set!r}: values must match specs one to one; unexpected {extra}, missing {sorted(set(plan.names) - set(req.values))}"
            )
        device = req.device_id
        acct = self._acct
        pseud = self._keys.pseudonym(device)
        skey = f"{req.stream}\x00{req.feature_set}"
        release_id = self._keys.tag(device, b"release\x00%s\x00%d" % (skey.encode(), req.window_index))[:16].hex()
        dev = acct.open_device(device)
        st = dev.streams.get(skey)
        if st is not None and req.window_index <= st.last:
            return self._replay(req, plan, st.recent.get(req.window_index), release_id, pseud, dev.header.lineage)
        if acct.is_late(device, req.end_ns):
            return self._suppress(req, skey, release_id, pseud, "late", {"retention_s": self.config.retention_s})
        acct.resolve_guard(dev, req.end_ns)
        if dev.guard_ns is not None and req.end_ns <= dev.guard_ns:
            return self._suppress(req, skey, release_id, pseud, "ledger_missing", {})
        short, budget = acct.assess(device, req.start_ns, req.end_ns, plan.epsilon, plan.delta)
        if short is not None:
            detail = {"rule": short.rule, "epsilon_needed": short.needed, "epsilon_remaining": short.remaining}
            return self._suppress(req, skey, release_id, pseud, "budget_exhausted", detail)
        active, _ = self._keys.noise_key(device)
        key_id = acct.key_for(device, req.start_ns // DAY_NS, active)
        dkey = self._keys.noise_key_version(device, key_id)
        if dkey is None:  # the day's key was retired: noising this day's windows under another key could re-noise one
            return self._suppress(req, skey, release_id, pseud, "key_retired", {"key_id": key_id})
        ident = identity_bytes(
            device, req.stream, req.feature_set, req.window_index, dev.header.lineage, req.start_ns, req.end_ns, req.content
        )
        out, sel = self._noise(plan, req, dkey, ident)
        acct.charge(
            device, skey, req.window_index, req.start_ns, req.end_ns, plan.epsilon, plan.delta, key_id,
            _digest(dkey, ident, out, sel),
        )
        self.stats["released"] += 1
        return self._release(plan, req, pseud, release_id, out, sel, budget, key_id)

    def _noise(self, plan: ReleasePlan, req: ReleaseRequest, dkey: bytes, ident: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        h = self._hmacs.get(dkey)
        if h is None:
            if len(self._hmacs) >= 100_000:
                self._hmacs.clear()
            h = self._hmacs[dkey] = hmac.new(dkey, digestmod=hashlib.sha256)
        h = h.copy()
        h.update(ident)  # == release_key(dkey, ident), without re-keying HMAC every release
        try:
            return plan.apply(req.values, NoiseStream(h.digest()))
        except KeyError as exc:
            raise PrivacyError(f"{req.feature_set!r}: values lack feature {exc.args[0]!r}") from None

    def _release(
        self,
        plan: ReleasePlan,
        req: ReleaseRequest,
        pseud: str,
        release_id: str,
        out: np.ndarray,
        sel: np.ndarray | None,
        budget: dict[str, Any],
        key_id: str,
    ) -> PrivateRelease:
        return PrivateRelease(
            release_id=release_id,
            device=pseud,
            stream=req.stream,
            feature_set=req.feature_set,
            window_index=req.window_index,
            values=plan.values(out, sel),
            epsilon=plan.epsilon,
            delta=plan.delta,
            mechanism=plan.mechanism,
            strategy=plan.strategy,
            budget=budget,
            key_id=key_id,
            feature_mechanisms=plan.feature_mechanisms,
            feature_epsilon=plan.feature_epsilon,
            plan=plan,
        )

    def _replay(
        self, req: ReleaseRequest, plan: ReleasePlan, outcome: Outcome | None, release_id: str, pseud: str, lineage: str
    ) -> PrivateRelease | Suppression:
        self.stats["replayed"] += 1
        if outcome is None:
            return Suppression(release_id, "replay_unknown", self._event(req, release_id, pseud, "replay_unknown", {}))
        if isinstance(outcome, Suppressed):
            return Suppression(release_id, outcome.reason, self._event(req, release_id, pseud, outcome.reason, {}))
        dkey = self._keys.noise_key_version(req.device_id, outcome.key_id)
        if dkey is None:
            event = self._event(req, release_id, pseud, "replay_key_retired", {"key_id": outcome.key_id})
            return Suppression(release_id, "replay_key_retired", event)
        ident = identity_bytes(
            req.device_id, req.stream, req.feature_set, req.window_index, lineage, req.start_ns, req.end_ns, req.content
        )
        out, sel = self._noise(plan, req, dkey, ident)
        if _digest(dkey, ident, out, sel) != outcome.digest or outcome.cost < _cost_units(plan.epsilon):
            # Same identity, different data or configuration: publishing would leak the difference.
            return Suppression(release_id, "replay_mismatch", self._event(req, release_id, pseud, "replay_mismatch", {}))
        budget = self.budget(req.device_id, req.start_ns, req.end_ns)
        return self._release(plan, req, pseud, release_id, out, sel, budget, outcome.key_id)

    def _event(
        self, req: ReleaseRequest, release_id: str, pseud: str, reason: str, detail: dict[str, Any]
    ) -> dict[str, Any]:
        kind = "budget_exhausted" if reason == "budget_exhausted" else "release_suppressed"
        return {
            "type": kind,
            "reason": reason,
            "release_id": release_id,
            "device": pseud,
            "stream": req.stream,
            "feature_set": req.feature_set,
            **detail,
        }

    def _suppress(
        self, req: ReleaseRequest, skey: str, release_id: str, pseud: str, reason: str, detail: dict[str, Any]
    ) -> Suppression:
        event = self._event(req, release_id, pseud, reason, detail)
        self._acct.record_suppression(req.device_id, skey, req.window_index, req.end_ns, reason)
        self.stats["suppressed"] += 1
        return Suppression(release_id, reason, event)


def _digest(dkey: bytes, ident: bytes, out: np.ndarray, sel: np.ndarray | None) -> str:
    """Keyed digest of the *released* values (only the sampled ones under ``sample``): the ledger
    can recognize a replay of the same data, and a reader of the ledger learns nothing from it."""
    released = out if sel is None else out[sel]
    tail = b"" if sel is None else sel.astype("<i8").tobytes()
    return hmac.digest(dkey, b"biopriv/digest/1\x00" + ident + b"\x00" + released.tobytes() + tail, hashlib.sha256)[:16].hex()


def _check_request(req: ReleaseRequest) -> None:
    if not isinstance(req.device_id, str) or not req.device_id:
        raise PrivacyError(f"device_id must be a non-empty string, got {req.device_id!r}")
    if (
        type(req.window_index) is not int and not isinstance(req.window_index, int | np.integer)
    ) or req.window_index < 0:
        raise PrivacyError(f"window_index must be an integer >= 0, got {req.window_index!r}")
    if not req.end_ns >= req.start_ns:
        raise PrivacyError(f"window must satisfy start_ns <= end_ns, got [{req.start_ns}, {req.end_ns}]")
    if not (req.hop_s > 0 and req.length_s > 0 and math.isfinite(req.hop_s) and math.isfinite(req.length_s)):
        raise PrivacyError(
            f"hop_s and length_s must be finite and > 0 s, got hop_s={req.hop_s!r}, length_s={req.length_s!r}"
        )
