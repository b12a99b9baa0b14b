"""``biopriv audit``: privacy audit of one mechanism, or of the real release path (Ding et al., CCS 2018,
plus an exact audit of the plan's kernels)."""

from __future__ import annotations

import argparse
import json

_DESCRIPTION = """\
Sample many releases of MECHANISM at the worst-case neighbouring inputs (the two ends of the
bounds; categories 0 and 1 for rr/grr), choose the most revealing output event on half of the
samples, and bound ln(P[M(x) in E] / P[M(x') in E]) from below on the other half with
Clopper-Pearson intervals. The audit passes when that lower bound does not exceed the claimed
epsilon. A correct mechanism fails with probability at most 1 - CONFIDENCE.

--path release audits what the worker publishes instead: PrivacyEngine.privatize with the
configuration users get (or --privacy-config), for one feature set, at the ends of the bounds
(--pair edge) or at 1/4 and 3/4 of the range (--pair interior); the statistical bound comes from
those releases, and the exact privacy loss of the plan's kernels is computed from their output
distribution (epsilon_exact). It passes when neither exceeds the release's epsilon.

Exit status: 0 pass, 1 fail (privacy violation detected), 2 bad arguments.
'broken-laplace' is calibrated for 2 x epsilon on purpose, to show a failing audit.
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``audit`` subcommand."""
    from pipeline.privacy.audit import AUDITABLE  # light: no scipy at import

    p = subparsers.add_parser(
        "audit",
        help="statistical privacy audit of one mechanism",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--path", choices=("mechanism", "release"), default="mechanism",
                   help="audit one mechanism's kernel, or the release path the worker runs (default: %(default)s)")
    p.add_argument("--mechanism", "-m", choices=AUDITABLE, help="mechanism to audit (--path mechanism)")
    p.add_argument("--epsilon", "-e", type=float,
                   help="claimed epsilon (> 0); --path release: overrides the configuration's (default: its epsilon)")
    p.add_argument("--feature-set", default="hr", help="--path release: feature set to audit (default: %(default)s)")
    p.add_argument("--stream", default="ppg", help="--path release: stream of the feature set (default: %(default)s)")
    p.add_argument("--pair", choices=("edge", "interior"), default="edge",
                   help="--path release: neighbouring inputs (default: %(default)s)")
    p.add_argument("--privacy-config", default=None, help="--path release: privacy configuration (default: built-in)")
    p.add_argument(
        "--samples", "-n", type=int, default=200_000, help="releases per neighbouring input (default: %(default)s)"
    )
    p.add_argument(
        "--confidence", type=float, default=0.99, help="confidence of the lower bound (default: %(default)s)"
    )
    p.add_argument("--delta", type=float, default=1e-6, help="delta of the gaussian mechanism (default: %(default)s)")
    p.add_argument("--grid-steps", type=int, default=1024, help="grid steps across the bounds (default: %(default)s)")
    p.add_argument("--categories", type=int, default=4, help="categories for grr (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the audit; 0 when the claimed epsilon holds, 1 when a violation is detected."""
    from pipeline.errors import ConfigError
    from pipeline.privacy.audit import audit_mechanism, audit_release

    if args.path == "release":
        from pipeline.privacy import PrivacyConfig

        config = PrivacyConfig.from_file(args.privacy_config) if args.privacy_config else None
        res = audit_release(args.feature_set, args.stream, args.epsilon, args.samples, pair=args.pair,
                            confidence=args.confidence, config=config)
    else:
        if args.mechanism is None or args.epsilon is None:
            raise ConfigError("--path mechanism needs --mechanism and --epsilon")
        res = audit_mechanism(
            args.mechanism,
            args.epsilon,
            args.samples,
            confidence=args.confidence,
            grid_steps=args.grid_steps,
            n_categories=args.categories,
            delta=args.delta,
        )
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        verdict = "PASS" if res.passed else "FAIL (privacy violation)"
        print(f"mechanism            {res.mechanism}")
        print(f"epsilon claimed      {res.epsilon_claimed:g}")
        if res.path == "release":
            print(f"path                 release: {res.feature_set} feature set, {res.pair} neighbours")
        print(f"epsilon lower bound  {res.epsilon_lower_bound:.4f} (confidence {res.confidence:g})")
        if res.epsilon_exact is not None:
            print(f"epsilon exact        {res.epsilon_exact:.6g} (the plan's kernels)")
        print(f"samples              {res.samples} per input")
        print(f"verdict              {verdict}")
    return 0 if res.passed else 1
