"""The study: what a deployment releases, how often, and under which per-device budget.

A study file (TOML) states the researcher's questions: per feature set, which features are
released, their public bounds, the *report period* (one report summarizes the device's windows
of one period: the mean of each feature over the windows that lie wholly inside the period and
have a value), and the epsilon each device spends on the set per UTC day. Budgets are per device:
``epsilon_per_day`` across everything it releases (default 2, as Apple caps Health data) and a
lifetime cap (default 60: a month at the daily cap). The worker accounts them with a day rule and
a lifetime rule; a report that would exceed either is suppressed with an event.

Scheduling (``docs/privacy.md``, "Studies"): with ``population`` division (the default) each
device reports in ``reports_per_day`` periods of each day, chosen from its key (independent of
the data), each report with the set's whole daily share divided among them; with ``budget``
division every device reports every period with the daily share divided among all of the day's
periods. At equal daily epsilon, population division has the lower population error
(``benchmarks/results/study.md``).

Missing values: a period without any valid window still gets a report where it is scheduled (so
that whether a report is published does not depend on the data): each feature's value is then
the public fallback (the midpoint of its bounds), and a privatized presence bit ``<feature>.present``
travels with it. :func:`pipeline.privacy.estimators.estimate_present_mean` turns both into an
unbiased estimate of the mean over devices that had a value.

Everything here is pure: :func:`load_study` validates a file (errors name the key and the allowed
values), :class:`Study` resolves it, :class:`ReportBuilder` accumulates windows into reports.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.features.base import mean1d
from pipeline.features.spec import FeatureSpec

__all__ = [
    "DAY_S",
    "DEFAULT_STUDY",
    "REGIONS",
    "Report",
    "ReportBuilder",
    "Study",
    "StudySet",
    "load_study",
]

DAY_S = 86_400

#: Scalp regions of the 10-20 system: a channel name belongs to the region its letters start with.
REGIONS: dict[str, tuple[str, ...]] = {
    "frontal": ("Fp", "AF", "F"),
    "central": ("FC", "C"),
    "temporal": ("FT", "T"),
    "parietal": ("CP", "P"),
    "occipital": ("PO", "O"),
}

#: Representative channel layouts, to know a feature set's feature names without a device.
_LAYOUT: dict[str, tuple[tuple[str, ...], float]] = {
    "eeg": (("Fz", "Cz", "Pz", "Oz", "T7", "Fp1"), 256.0),
    "mic": (("mic",), 16000.0),
    "hr": (("ppg",), 64.0),
    "hrv": (("ppg",), 64.0),
    "eda": (("eda",), 4.0),
    "acc": (("x", "y", "z"), 32.0),
    "temp": (("skin",), 4.0),
    "resp": (("resp",), 25.0),
}

#: The default study: a handful of values per device, 2 epsilon per day across all of them.
DEFAULT_STUDY: dict[str, Any] = {
    "budget": {"epsilon_per_day": 2.0, "lifetime_epsilon": 60.0, "scheduling": "population"},
    "sets": {
        "hr": {"features": ["hr"], "period": "10min", "epsilon_per_day": 0.4, "bounds": {"hr": [40, 180]}},
        "hrv": {"features": ["rmssd"], "period": "1h", "epsilon_per_day": 0.2},
        "eda": {"features": ["scl"], "period": "10min", "epsilon_per_day": 0.2},
        "acc": {"features": ["activity"], "period": "10min", "epsilon_per_day": 0.2},
        "temp": {"features": ["temp_mean"], "period": "10min", "epsilon_per_day": 0.2},
        "resp": {"features": ["resp_rate"], "period": "10min", "epsilon_per_day": 0.2},
        "mic": {"features": ["speech_ratio"], "period": "10min", "epsilon_per_day": 0.2},
        "eeg": {
            "features": ["alpha_rel@frontal", "alpha_rel@occipital", "theta_rel@frontal", "beta_rel@central"],
            "period": "1h",
            "epsilon_per_day": 0.4,
        },
    },
}

_BUDGET_KEYS = ("epsilon_per_day", "lifetime_epsilon", "scheduling")
_SET_KEYS = ("features", "period", "epsilon_per_day", "reports_per_day", "bounds")
_SCHEDULING = ("population", "budget")
_UNITS = {"s": 1, "min": 60, "h": 3600}


def _period_s(where: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(f"{where}: a period is seconds or a string like '10min', '1h', got {raw!r}")
    seconds: float
    if isinstance(raw, str):
        m = re.fullmatch(r"\s*(\d+)\s*(s|min|h)\s*", raw)
        if m is None:
            raise ConfigError(f"{where}: period {raw!r} is not like '30s', '10min' or '1h'")
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        seconds = raw
    if seconds != int(seconds) or int(seconds) < 1 or DAY_S % int(seconds):
        raise ConfigError(f"{where}: a period must be a whole number of seconds dividing a day (86400), got {raw!r}")
    return int(seconds)


def _positive(where: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw <= 0:
        raise ConfigError(f"{where} must be a number > 0, got {raw!r}")
    return float(raw)


def _unknown(where: str, got: Iterable[str], allowed: Iterable[str]) -> None:
    extra = sorted(set(got) - set(allowed))
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r}; allowed: {', '.join(repr(a) for a in allowed)}")


def set_specs(name: str) -> tuple[FeatureSpec, ...]:
    """The default specs of feature set ``name`` for a representative channel layout."""
    from pipeline.features import FEATURE_SETS, feature_sets

    stream = next(s for s, sets in FEATURE_SETS.items() if name in sets)
    channels, rate = _LAYOUT[name]
    return next(fs for fs in feature_sets(stream) if fs.name == name).specs(channels, rate)


@dataclass(frozen=True)
class StudyFeature:
    """One released feature: a feature of the set, or ``<feature>@<region>`` (EEG: the mean over
    the region's channels)."""

    name: str
    base: str
    region: str | None
    spec: FeatureSpec  # public bounds (the study's, or the feature's defaults)

    def value(self, values: Mapping[str, float]) -> float:
        """This feature's value in one window's values (keyed by public feature names)."""
        if self.region is None:
            return float(values.get(self.base, math.nan))
        prefixes = REGIONS[self.region]
        picked = []
        for key, v in values.items():
            base, _, channel = key.partition(".")
            if base == self.base and channel and _region_of(channel, prefixes) and math.isfinite(v):
                picked.append(v)
        return float(np.mean(picked)) if picked else math.nan

    def picks(self, names: Sequence[str]) -> int | np.ndarray | None:
        """Where :meth:`value` takes its value from in values ordered like ``names``: the index of
        the feature (None: absent), or, for a region, the indices of the region's channels of the
        feature in ``names`` order (:func:`_feature_value` computes the value from them)."""
        if self.region is None:
            return names.index(self.base) if self.base in names else None
        prefixes = REGIONS[self.region]
        idx = []
        for i, key in enumerate(names):
            base, _, channel = key.partition(".")
            if base == self.base and channel and _region_of(channel, prefixes):
                idx.append(i)
        return np.asarray(idx, dtype=np.intp)


def _feature_value(array: np.ndarray, pick: int | np.ndarray | None) -> float:
    """:meth:`StudyFeature.value` from an array of values and the feature's :meth:`StudyFeature.picks`:
    bitwise the same (a region's mean over its finite values in the same order: the same pairwise
    sum as ``np.mean`` of the list, divided by their count)."""
    if pick is None:
        return math.nan
    if isinstance(pick, int):
        return float(array[pick])
    picked = array[pick]
    picked = picked[np.isfinite(picked)]
    return mean1d(picked) if picked.size else math.nan


def _region_of(channel: str, prefixes: tuple[str, ...]) -> bool:
    letters = re.match(r"[A-Za-z]+", channel)
    if letters is None:
        return False
    head = letters.group(0)
    # the longest matching prefix among all regions decides (FC is central, not frontal)
    best = max((p for ps in REGIONS.values() for p in ps if head.startswith(p)), key=len, default=None)
    return best in prefixes


@dataclass(frozen=True)
class StudySet:
    """What one feature set releases."""

    name: str
    features: tuple[StudyFeature, ...]
    period_s: int
    epsilon_per_day: float
    reports_per_day: int
    scheduling: str

    @property
    def periods_per_day(self) -> int:
        return DAY_S // self.period_s

    @property
    def epsilon_per_report(self) -> float:
        n = self.reports_per_day if self.scheduling == "population" else self.periods_per_day
        return self.epsilon_per_day / n

    #: The report's specs: each feature (numeric, study bounds), then its presence bit. One
    #: object per set: the privacy engine caches the compiled plan by its identity.
    specs: tuple[FeatureSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        presence = tuple(FeatureSpec(f"{f.name}.present", "1", 0.0, 1.0, kind="binary") for f in self.features)
        object.__setattr__(self, "specs", tuple(f.spec for f in self.features) + presence)

    def design(self) -> dict[str, Any]:
        """The public scheduling design carried by every report (what an estimator needs)."""
        return {
            "scheduling": self.scheduling,
            "period_s": self.period_s,
            "reports_per_day": self.reports_per_day if self.scheduling == "population" else self.periods_per_day,
            "value": "mean of the period's windows with a value; the midpoint of the bounds when none (see .present)",
        }


@dataclass(frozen=True)
class Study:
    """A resolved, validated study."""

    sets: Mapping[str, StudySet]
    epsilon_per_day: float
    lifetime_epsilon: float
    scheduling: str
    source: str = "built-in default"
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def default(cls) -> Study:
        return from_mapping(DEFAULT_STUDY, "built-in default")

    def set_for(self, feature_set: str) -> StudySet | None:
        return self.sets.get(feature_set)

    def daily_spend(self) -> float:
        return sum(s.epsilon_per_day for s in self.sets.values())

    def privacy_config(self, base: Any = None) -> Any:
        """The privacy engine configuration that accounts this study: a UTC-day rule at
        ``epsilon_per_day``, the lifetime cap, no w-event rule (the day is the horizon)."""
        from pipeline.privacy.config import PeriodRule, PrivacyConfig

        cfg = base if base is not None else PrivacyConfig()
        longest = max(s.period_s for s in self.sets.values())
        return replace(
            cfg,
            epsilon=min(s.epsilon_per_report for s in self.sets.values()),
            w_event=None,
            period=PeriodRule(epsilon=self.epsilon_per_day, period_s=float(DAY_S)),
            lifetime_epsilon=self.lifetime_epsilon,
            retention_s=float(longest + 600),
        )

    def summary(self) -> dict[str, Any]:
        """What each device spends (JSON-able; ``biopriv study check``)."""
        return {
            "source": self.source,
            "scheduling": self.scheduling,
            "epsilon_per_day": self.epsilon_per_day,
            "lifetime_epsilon": self.lifetime_epsilon,
            "spend_per_day": round(self.daily_spend(), 9),
            "days_until_lifetime_cap": math.floor(self.lifetime_epsilon / self.daily_spend() + 1e-9),
            "sets": {
                n: {
                    "features": [f.name for f in s.features],
                    "bounds": {f.name: [f.spec.lower, f.spec.upper] for f in s.features},
                    "period_s": s.period_s,
                    "reports_per_day": s.design()["reports_per_day"],
                    "epsilon_per_report": s.epsilon_per_report,
                    "epsilon_per_day": s.epsilon_per_day,
                }
                for n, s in self.sets.items()
            },
        }

    def scheduled(self, tag: Callable[[str, bytes], bytes], device_id: str, feature_set: str, period: int) -> bool:
        """Whether the device reports ``feature_set`` in ``period`` (index of ``period_s`` since
        the epoch). Population division: ``reports_per_day`` periods of each UTC day, a keyed
        pseudorandom choice (``tag`` = :meth:`KeyProvider.tag`), never the data."""
        s = self.sets[feature_set]
        if s.scheduling == "budget":
            return True
        per_day = s.periods_per_day
        day, slot = divmod(period, per_day)
        key = (device_id, feature_set, day)
        chosen = self._cache.get("sched", {}).get(key) if "sched" in self._cache else None
        if chosen is None:
            digest = tag(device_id, b"schedule\x00%s\x00%d" % (feature_set.encode(), day))
            rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
            chosen = frozenset(rng.choice(per_day, size=s.reports_per_day, replace=False).tolist())
            cache = self._cache.setdefault("sched", {})
            if len(cache) > 100_000:
                cache.clear()
            cache[key] = chosen
        return slot in chosen


def from_mapping(data: Mapping[str, Any], source: str) -> Study:
    """Validate a study mapping (the parsed TOML); errors name the key and the allowed values."""
    from pipeline.features import FEATURE_SETS

    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a study is a table with [budget] and [sets.<name>]")
    _unknown(source, data, ("budget", "sets"))
    budget = data.get("budget", {})
    _unknown(f"{source}: [budget]", budget, _BUDGET_KEYS)
    per_day = _positive("budget.epsilon_per_day", budget.get("epsilon_per_day", 2.0))
    lifetime = _positive("budget.lifetime_epsilon", budget.get("lifetime_epsilon", 60.0))
    scheduling = budget.get("scheduling", "population")
    if scheduling not in _SCHEDULING:
        raise ConfigError(f"budget.scheduling must be one of {', '.join(map(repr, _SCHEDULING))}, got {scheduling!r}")
    raw_sets = data.get("sets")
    if not isinstance(raw_sets, Mapping) or not raw_sets:
        raise ConfigError(f"{source}: a study needs at least one [sets.<feature set>] table")
    known_sets = sorted({n for sets in FEATURE_SETS.values() for n in sets})
    sets: dict[str, StudySet] = {}
    for name, raw in raw_sets.items():
        where = f"sets.{name}"
        if name not in known_sets:
            raise ConfigError(f"{where}: unknown feature set; allowed: {', '.join(known_sets)}")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table")
        _unknown(where, raw, _SET_KEYS)
        specs = {s.name: s for s in set_specs(name)}
        bases = {n.partition(".")[0]: s for n, s in specs.items()}
        channel_features = {n.partition(".")[0] for n in specs if "." in n}
        names = raw.get("features")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}.features must be a non-empty list of feature names")
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.features lists a feature twice")
        bounds = raw.get("bounds", {})
        if not isinstance(bounds, Mapping):
            raise ConfigError(f"{where}.bounds must be a table feature = [lower, upper]")
        _unknown(f"{where}.bounds", bounds, names)
        feats = []
        for fname in names:
            base, _, region = fname.partition("@")
            if base not in bases:
                raise ConfigError(f"{where}.features: unknown feature {base!r}; allowed: {', '.join(sorted(bases))}")
            if base in channel_features and not region:
                raise ConfigError(
                    f"{where}.features: {base!r} is per channel: release it per region, '{base}@<region>' with region "
                    f"one of {', '.join(REGIONS)}"
                )
            if region and (base not in channel_features or region not in REGIONS):
                raise ConfigError(f"{where}.features: {fname!r}: region must be one of {', '.join(REGIONS)} "
                                  "(on a per-channel feature)")
            spec = bases[base]
            if spec.kind != "numeric":
                raise ConfigError(f"{where}.features: {base!r} is {spec.kind}; studies release numeric features")
            lo, hi = spec.lower, spec.upper
            if fname in bounds:
                b = bounds[fname]
                if (not isinstance(b, list) or len(b) != 2 or not all(isinstance(x, (int, float)) for x in b)
                        or not b[0] < b[1]):
                    raise ConfigError(f"{where}.bounds.{fname} must be [lower, upper] with lower < upper, got {b!r}")
                lo, hi = float(b[0]), float(b[1])
            feats.append(StudyFeature(fname, base, region or None, FeatureSpec(fname, spec.unit, lo, hi)))
        period = _period_s(f"{where}.period", raw.get("period", "10min"))
        eps_day = _positive(f"{where}.epsilon_per_day", raw.get("epsilon_per_day", per_day / len(raw_sets)))
        rpd = raw.get("reports_per_day", 1)
        if isinstance(rpd, bool) or not isinstance(rpd, int) or not 1 <= rpd <= DAY_S // period:
            raise ConfigError(f"{where}.reports_per_day must be an integer in 1..{DAY_S // period} (periods per day), got {rpd!r}")
        sets[name] = StudySet(name, tuple(feats), period, eps_day, rpd, scheduling)
    study = Study(sets, per_day, lifetime, scheduling, source)
    spend = study.daily_spend()
    if spend > per_day * (1 + 1e-9):
        parts = ", ".join(f"{n} {s.epsilon_per_day:g}" for n, s in sets.items())
        raise ConfigError(
            f"{source}: the feature sets spend {spend:g} epsilon per device per day ({parts}), more than "
            f"budget.epsilon_per_day = {per_day:g}: the day's last reports could never be paid for. Lower a set's "
            "epsilon_per_day or raise the daily budget"
        )
    if lifetime < spend:
        raise ConfigError(
            f"{source}: budget.lifetime_epsilon = {lifetime:g} cannot pay for one day of reports ({spend:g} per day)"
        )
    return study


def load_study(path: str | Path | None) -> Study:
    """Load and validate a study file (None: the built-in default)."""
    if path is None:
        return Study.default()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read study file {p}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study file {p} is not valid TOML: {exc}") from None
    return from_mapping(data, str(p))


# --------------------------------------------------------------------------- reports


@dataclass
class _Period:
    """The windows of one period accumulated so far (per feature: sum and count of valid values)."""

    index: int
    sums: np.ndarray
    counts: np.ndarray
    windows: int = 0
    last_window: int = -1


@dataclass(frozen=True)
class Report:
    """A closed period's report, ready to privatize."""

    device_id: str
    stream: str
    feature_set: str
    period: int
    start_ns: int
    end_ns: int
    values: np.ndarray  # features (fallback where absent), then presence bits, in StudySet.specs order
    content: bytes


class ReportBuilder:
    """Turns a device's windows into per-period reports (one builder per worker).

    A window contributes to the period that wholly contains it (windows straddling a boundary
    contribute to none), with the features it has a finite value for. A period closes when a window
    of a later period (or straddling its end) arrives: windows come in order per stream, so every
    window of the period has been seen. A closed period yields a report if the device is scheduled
    to report in it (:meth:`Study.scheduled`), whatever its values.
    """

    def __init__(self, study: Study, tag: Callable[[str, bytes], bytes]) -> None:
        self.study = study
        self._tag = tag
        self._open: dict[tuple[str, str, str], _Period] = {}
        self._pick_cache: dict[tuple[str, tuple[str, ...]], tuple[int | np.ndarray | None, ...]] = {}

    def add(self, device_id: str, stream: str, feature_set: str, window_index: int, start_ns: int, end_ns: int,
            values: Mapping[str, float]) -> list[Report]:
        """Add one window's values (keyed by public feature names); returns the reports it closed."""
        names = tuple(values)
        array = np.fromiter((float(values[n]) for n in names), dtype=np.float64, count=len(names))
        return self.add_array(device_id, stream, feature_set, window_index, start_ns, end_ns, names, array)

    def add_array(self, device_id: str, stream: str, feature_set: str, window_index: int, start_ns: int, end_ns: int,
                  names: tuple[str, ...], array: np.ndarray) -> list[Report]:
        """:meth:`add` with the window's values as an array in the order of ``names`` (public feature
        names): what the processor has, without a name -> value mapping per window."""
        s = self.study.sets[feature_set]
        step = s.period_s * 1_000_000_000
        key = (device_id, stream, feature_set)
        first, last = start_ns // step, (end_ns - 1) // step
        out: list[Report] = []
        cur = self._open.get(key)
        if cur is not None and window_index <= cur.last_window:
            return out  # redelivered
        if cur is not None and last > cur.index:
            out += self._close(key, cur, s)
            cur = None
        if first != last:  # straddles a boundary: in no period
            return out
        if cur is None:
            n = len(s.features)
            cur = self._open[key] = _Period(first, np.zeros(n), np.zeros(n, dtype=np.int64))
        array = np.asarray(array, dtype=np.float64)
        sums, counts = cur.sums, cur.counts
        for i, pick in enumerate(self._picks(s, names)):  # a handful of features: scalar steps beat array calls
            v = _feature_value(array, pick)
            if math.isfinite(v):
                sums[i] += v  # the same float64 addition as the array form sums[ok] += v[ok]
                counts[i] += 1
        cur.windows += 1
        cur.last_window = window_index
        return out

    def _picks(self, s: StudySet, names: tuple[str, ...]) -> tuple[int | np.ndarray | None, ...]:
        """Per study feature, where its value is in an array ordered like ``names``
        (:func:`_feature_value`). Cached per feature set and name layout (a few per deployment:
        one per channel layout, not per device; the cache is cleared if it ever grows large)."""
        ck = (s.name, names)
        picks = self._pick_cache.get(ck)
        if picks is None:
            if len(self._pick_cache) >= 1024:
                self._pick_cache.clear()
            picks = self._pick_cache[ck] = tuple(f.picks(names) for f in s.features)
        return picks
    def _close(self, key: tuple[str, str, str], cur: _Period, s: StudySet) -> list[Report]:
        del self._open[key]
        device_id, stream, feature_set = key
        if not self.study.scheduled(self._tag, device_id, feature_set, cur.index):
            return []
        present = cur.counts > 0
        mids = np.array([(f.spec.lower + f.spec.upper) / 2.0 for f in s.features])
        values = np.where(present, cur.sums / np.maximum(cur.counts, 1), mids)
        step = s.period_s * 1_000_000_000
        content = b"report/1|%d|%d|%s" % (cur.index, cur.windows, ",".join(map(str, cur.counts.tolist())).encode())
        return [Report(device_id, stream, feature_set, cur.index, cur.index * step, (cur.index + 1) * step,
                       np.concatenate([values, present.astype(np.float64)]), content)]

    def forget(self, devices: set[str]) -> None:
        """Drop the open periods of ``devices`` (revoked partitions, idle eviction)."""
        for key in [k for k in self._open if k[0] in devices]:
            del self._open[key]

    def open_periods(self) -> int:
        return len(self._open)
