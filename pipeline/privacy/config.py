"""Privacy configuration: per-release epsilon, accounting rules, mechanism overrides.

Every setting is validated once, here, with :mod:`pipeline.validation` so that errors name the bad
value and the allowed range. Settings that are legal but offer no meaningful protection
(epsilon above 10 per privacy unit, above 1 for medical data, delta not far below
1 / number-of-devices) raise a :class:`PrivacyWarning` and are logged at WARNING level.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.privacy.mechanisms import KIND_MECHANISMS, MECHANISMS
from pipeline.validation import check_option, check_range

log = logging.getLogger(__name__)

#: Epsilon per privacy unit above which the guarantee is considered meaningless.
EPSILON_WARN = 10.0
#: Same threshold for data marked medical.
EPSILON_WARN_MEDICAL = 1.0
#: Epsilon per device and UTC day (period rule of one day) above which a warning is given
#: (Apple caps Health data at 2 per day), and the same for data marked medical.
EPSILON_DAY_WARN = 8.0
EPSILON_DAY_WARN_MEDICAL = 2.0
#: Lifetime epsilon per device above which a warning is given (two years at the medical daily cap).
EPSILON_LIFETIME_WARN = 1460.0
#: delta * n_devices must stay below this ("far below 1/n").
DELTA_N_MAX = 0.01

STRATEGIES = ("auto", "split", "sample")


class PrivacyWarning(UserWarning):
    """A privacy setting is legal but gives little or no meaningful protection."""


def warn_privacy(message: str) -> None:
    """Emit ``message`` loudly: as a :class:`PrivacyWarning` and as a WARNING log record."""
    log.warning(message)
    warnings.warn(message, PrivacyWarning, stacklevel=3)


@dataclass(frozen=True, slots=True)
class WEventRule:
    """At most ``epsilon`` over any time interval of ``horizon_s`` seconds of captured data.

    A release is charged against every interval its capture span ``[start, end]`` intersects, so
    a sample that lies in ``length / hop`` overlapping windows is charged once per window.
    ``w`` consecutive hops of ``hop`` seconds correspond to ``horizon_s = w * hop``.
    """

    epsilon: float
    horizon_s: float


@dataclass(frozen=True, slots=True)
class PeriodRule:
    """At most ``epsilon`` per period of ``period_s`` seconds (UTC-aligned), renewed each period."""

    epsilon: float
    period_s: float


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """Validated configuration of the privacy engine.

    Attributes
    ----------
    epsilon : float
        Epsilon spent by one release (one window of one feature set of one device), > 0.
    delta : float
        Delta of one release, used only by features released with the discrete Gaussian.
        ``delta * n_devices`` must be <= 0.01.
    n_devices : int
        Expected number of devices (privacy units), for the delta check.
    grid_steps : int
        Number of grid steps across each numeric feature's ``[lower, upper]``; even, >= 2.
    strategy : {"auto", "split", "sample"}
        How a vector of d features shares ``epsilon``: ``split`` (error-minimizing weights across
        all d), ``sample`` (k of d features, each with epsilon / k) or ``auto`` (the lower
        expected error of the two, computed per feature set).
    sample_k : int or None
        k for the ``sample`` strategy; None chooses the k of lowest expected error.
    mechanisms : dict of str to str
        Explicit overrides: feature-name glob pattern -> mechanism name. First match wins.
    w_event, period : WEventRule, PeriodRule or None
        Accounting rules; None disables the rule.
    lifetime_epsilon : float or None
        Lifetime cap per device; None disables it.
    delta_cap : float or None
        Total delta a device may spend over its lifetime (Gaussian releases compose additively);
        None means ``0.01 / n_devices``. A release that would exceed it is suppressed.
    retention_s : float
        How far behind a device's newest data (seconds) a release may lag and still be accounted;
        older releases are suppressed as ``late``. Bounds the ledger's memory.
    medical : bool
        True when the whole data set is medical; warns above epsilon 1.
    """

    epsilon: float = 0.1
    delta: float = 0.0
    n_devices: int = 1000
    grid_steps: int = 1024
    strategy: str = "auto"
    sample_k: int | None = None
    mechanisms: Mapping[str, str] = field(default_factory=dict)
    w_event: WEventRule | None = WEventRule(epsilon=8.0, horizon_s=5.0)
    period: PeriodRule | None = None
    lifetime_epsilon: float | None = None
    delta_cap: float | None = None
    retention_s: float = 60.0
    medical: bool = False

    def __post_init__(self) -> None:
        check_range("epsilon", self.epsilon, 0.0, None, low_inclusive=False)
        check_range("delta", self.delta, 0.0, 1.0, high_inclusive=False)
        if not isinstance(self.n_devices, int) or self.n_devices < 1:
            raise ConfigError(f"n_devices must be an integer >= 1, got {self.n_devices!r}")
        if self.delta > 0 and self.delta * self.n_devices > DELTA_N_MAX:
            raise ConfigError(
                f"delta must be far below 1/n_devices: need delta * n_devices <= {DELTA_N_MAX}, "
                f"got delta={self.delta!r} with n_devices={self.n_devices} (product {self.delta * self.n_devices:.3g})"
            )
        if (
            not isinstance(self.grid_steps, int)
            or self.grid_steps < 2
            or self.grid_steps % 2
            or self.grid_steps > 2**20
        ):
            raise ConfigError(f"grid_steps must be an even integer in [2, 1048576], got {self.grid_steps!r}")
        check_option("strategy", self.strategy, STRATEGIES)
        if self.sample_k is not None and (not isinstance(self.sample_k, int) or self.sample_k < 1):
            raise ConfigError(f"sample_k must be an integer >= 1 or None, got {self.sample_k!r}")
        for pattern, mech in self.mechanisms.items():
            check_option(f"mechanisms[{pattern!r}]", mech, MECHANISMS)
            if mech == "gaussian" and self.delta <= 0:
                raise ConfigError(f"mechanisms[{pattern!r}] = 'gaussian' needs delta > 0, got delta={self.delta!r}")
        if self.w_event is not None:
            check_range("w_event.epsilon", self.w_event.epsilon, 0.0, None, low_inclusive=False)
            check_range("w_event.horizon_s", self.w_event.horizon_s, 0.0, None, low_inclusive=False, unit="s")
        if self.period is not None:
            check_range("period.epsilon", self.period.epsilon, 0.0, None, low_inclusive=False)
            check_range("period.period_s", self.period.period_s, 1.0, None, unit="s")
        if self.lifetime_epsilon is not None:
            check_range("lifetime_epsilon", self.lifetime_epsilon, 0.0, None, low_inclusive=False)
        if self.delta_cap is not None:
            check_range("delta_cap", self.delta_cap, 0.0, 1.0, high_inclusive=False)
        check_range("retention_s", self.retention_s, 0.0, None, low_inclusive=False, unit="s")
        for rule, eps, medical_limit, limit in self._unit_epsilons():
            limit = medical_limit if self.medical else limit
            if eps > limit:
                what = "medical data" if self.medical else "a privacy unit"
                warn_privacy(f"{rule} = {eps:g} exceeds {limit:g} for {what}: no meaningful protection")

    def _unit_epsilons(self) -> list[tuple[str, float, float, float]]:
        """The epsilons that bound what one device discloses (per release, per event horizon, per
        day, in its lifetime), each with its warning limit for medical and other data."""
        out = [("epsilon", self.epsilon, EPSILON_WARN_MEDICAL, EPSILON_WARN)]
        if self.w_event is not None:
            out.append(("w_event.epsilon", self.w_event.epsilon, EPSILON_WARN_MEDICAL, EPSILON_WARN))
        if self.period is not None and self.period.period_s >= 86400.0:  # a daily (or longer) budget
            out.append(("period.epsilon", self.period.epsilon, EPSILON_DAY_WARN_MEDICAL, EPSILON_DAY_WARN))
        if self.lifetime_epsilon is not None:
            out.append(("lifetime_epsilon", self.lifetime_epsilon, EPSILON_LIFETIME_WARN, EPSILON_LIFETIME_WARN))
        return out

    def check_medical(self, feature_set: str, names: list[str]) -> None:
        """Warn when medical features are released with more than epsilon 1 per privacy unit."""
        if self.medical or not names:
            return
        for rule, eps, medical_limit, _ in self._unit_epsilons():
            if eps > medical_limit:
                shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
                warn_privacy(
                    f"{rule} = {eps:g} exceeds {medical_limit:g} for medical features of "
                    f"{feature_set!r} ({shown}): no meaningful protection"
                )

    def override_for(self, name: str) -> str | None:
        """The mechanism forced for feature ``name`` by ``mechanisms``, or None."""
        for pattern, mech in self.mechanisms.items():
            if fnmatch.fnmatchcase(name, pattern):
                return mech
        return None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def default(cls) -> PrivacyConfig:
        """Defaults for a demo: minutes of streaming, several streams per device, no exhaustion.

        epsilon 0.1 per release and 8 over any 5-s episode: a stream with 2-s windows every 0.5 s
        has at most 15 releases intersecting a 5-s interval (1.5), so five such streams fit.
        """
        return cls()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PrivacyConfig:
        """Build from plain data (the ``[privacy]`` table of a TOML file, or JSON).

        Unknown keys are rejected. ``w_event`` takes ``{epsilon, horizon_s}`` or
        ``{epsilon, w, hop_s}``; ``period`` takes ``{epsilon, period_s}`` or
        ``{epsilon, period: "hour"|"day"|"week"}``; ``false``/``None`` disables a rule.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"privacy configuration must be a table, got {type(data).__name__}")
        if isinstance(data.get("privacy"), Mapping):
            data = data["privacy"]
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown privacy setting(s) {unknown}; allowed are {sorted(known)}")
        kwargs: dict[str, Any] = dict(data)
        if "w_event" in data:
            kwargs["w_event"] = _w_event(data["w_event"])
        if "period" in data:
            kwargs["period"] = _period(data["period"])
        if "mechanisms" in data:
            mechs = data["mechanisms"]
            if not isinstance(mechs, Mapping):
                raise ConfigError(f"mechanisms must be a table pattern -> mechanism, got {mechs!r}")
            kwargs["mechanisms"] = {str(k): str(v) for k, v in mechs.items()}
        for key in ("epsilon", "delta", "retention_s", "lifetime_epsilon", "delta_cap"):
            if key in kwargs and kwargs[key] is not None and not isinstance(kwargs[key], bool):
                kwargs[key] = check_range(key, kwargs[key])
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> PrivacyConfig:
        """Read a TOML (``.toml``) or JSON file; a top-level ``[privacy]`` table is accepted."""
        p = Path(path)
        try:
            text = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read privacy configuration {str(p)!r}: {exc.strerror}") from None
        try:
            data = tomllib.loads(text.decode()) if p.suffix.lower() == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot parse privacy configuration {str(p)!r}: {exc}") from None
        return cls.from_mapping(data)

    def to_mapping(self) -> dict[str, Any]:
        """Plain data that :meth:`from_mapping` accepts."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "n_devices": self.n_devices,
            "grid_steps": self.grid_steps,
            "strategy": self.strategy,
            "sample_k": self.sample_k,
            "mechanisms": dict(self.mechanisms),
            "w_event": None
            if self.w_event is None
            else {"epsilon": self.w_event.epsilon, "horizon_s": self.w_event.horizon_s},
            "period": None
            if self.period is None
            else {"epsilon": self.period.epsilon, "period_s": self.period.period_s},
            "lifetime_epsilon": self.lifetime_epsilon,
            "delta_cap": self.delta_cap,
            "retention_s": self.retention_s,
            "medical": self.medical,
        }


_PERIODS = {"hour": 3600.0, "day": 86400.0, "week": 604800.0}


def _w_event(raw: Any) -> WEventRule | None:
    if raw is None or raw is False:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"w_event must be a table {{epsilon, horizon_s}} or false, got {raw!r}")
    extra = sorted(set(raw) - {"epsilon", "horizon_s", "w", "hop_s"})
    if extra:
        raise ConfigError(f"unknown w_event setting(s) {extra}")
    if "epsilon" not in raw:
        raise ConfigError("w_event.epsilon is missing")
    if "horizon_s" in raw:
        horizon = check_range("w_event.horizon_s", raw["horizon_s"], 0.0, None, low_inclusive=False, unit="s")
    elif "w" in raw and "hop_s" in raw:
        w = raw["w"]
        if not isinstance(w, int) or w < 1:
            raise ConfigError(f"w_event.w must be an integer >= 1, got {w!r}")
        horizon = w * check_range("w_event.hop_s", raw["hop_s"], 0.0, None, low_inclusive=False, unit="s")
    else:
        raise ConfigError("w_event needs horizon_s, or w and hop_s")
    return WEventRule(epsilon=check_range("w_event.epsilon", raw["epsilon"]), horizon_s=horizon)


def _period(raw: Any) -> PeriodRule | None:
    if raw is None or raw is False:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"period must be a table {{epsilon, period_s}} or false, got {raw!r}")
    extra = sorted(set(raw) - {"epsilon", "period_s", "period"})
    if extra:
        raise ConfigError(f"unknown period setting(s) {extra}")
    if "epsilon" not in raw:
        raise ConfigError("period.epsilon is missing")
    if "period_s" in raw:
        seconds = check_range("period.period_s", raw["period_s"], 1.0, None, unit="s")
    elif "period" in raw:
        seconds = _PERIODS[check_option("period.period", raw["period"], _PERIODS)]
    else:
        raise ConfigError("period needs period_s or period (hour, day, week)")
    return PeriodRule(epsilon=check_range("period.epsilon", raw["epsilon"]), period_s=seconds)


def check_spec_bounds(name: str, lower: float, upper: float) -> None:
    """Reject features whose public bounds are missing (NaN) or infinite."""
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise ConfigError(f"feature {name!r}: bounds must be finite public constants, got [{lower}, {upper}]")


__all__ = ["KIND_MECHANISMS", "PeriodRule", "PrivacyConfig", "PrivacyWarning", "WEventRule", "check_spec_bounds"]
