"""Local differential privacy for streamed biosignal features.

The curated public surface: the worker builds a :class:`PrivacyEngine` from a
:class:`PrivacyConfig` and keys (:func:`load_keys`, or any :class:`KeyProvider`), then calls
:meth:`PrivacyEngine.privatize` with a :class:`ReleaseRequest` for every window. Analysts use
:func:`estimate_mean` and :func:`estimate_frequency`. See ``docs/privacy.md``.
"""

from pipeline.privacy.accountant import Accountant, Shortfall
from pipeline.privacy.audit import AuditResult, audit_mechanism
from pipeline.privacy.config import PeriodRule, PrivacyConfig, PrivacyWarning, WEventRule
from pipeline.privacy.engine import PrivacyEngine, PrivateRelease, ReleaseRequest, Suppression
from pipeline.privacy.estimators import Estimate, estimate_frequency, estimate_mean, estimate_present_mean
from pipeline.privacy.keys import KeyProvider, KeyRing, load_keys, rotate_keys
from pipeline.privacy.mechanisms import MECHANISMS

__all__ = [
    "MECHANISMS",
    "Accountant",
    "AuditResult",
    "Estimate",
    "KeyProvider",
    "KeyRing",
    "PeriodRule",
    "PrivacyConfig",
    "PrivacyEngine",
    "PrivacyWarning",
    "PrivateRelease",
    "ReleaseRequest",
    "Shortfall",
    "Suppression",
    "WEventRule",
    "audit_mechanism",
    "estimate_frequency",
    "estimate_mean",
    "estimate_present_mean",
    "load_keys",
    "rotate_keys",
]
