"""The statistics of A/B experiments: per-variant counts in, a report of rates, intervals and tests out.

Pure: no I/O, and nothing heavy at import. statsmodels (about 2 s to import) and scipy are imported
when ``report()`` first runs, so the API can import this module cheaply. The counts come from Redis (the store
owns the keys); the API and the CLI show what ``report()`` returns (``ExperimentReport.to_json`` and
``table``).

**Unit of analysis: the exposed shopper.** A variant's conversion is the share of its exposed shoppers
with at least one attributed purchase (``converted / exposed``); revenue per shopper is attributed
revenue over exposed shoppers, shoppers without revenue included as 0. Answers, views, carts and
purchases are reported as counts only: they are not independent draws (one shopper makes many), so no
test is run on them.

**Every variant is compared with the first** (the control, by convention the first variant of the
experiment document). ``lift`` is the absolute difference of conversion ``p_variant - p_first``;
``relative_lift`` is ``p_variant / p_first - 1``.

**Methods** (``confidence`` is the level of every interval, 0.95 by default):

- conversion: Wilson score interval (``statsmodels.stats.proportion.proportion_confint``,
  ``method="wilson"``);
- lift: Newcombe's hybrid score interval (``confint_proportions_2indep(method="newcomb",
  compare="diff")``; Newcombe 1998, Statistics in Medicine 17(8):873-890, method 10);
- relative lift: log interval of the ratio, minus 1 (``confint_proportions_2indep(method="log",
  compare="ratio")``, Katz et al. 1978);
- ``p_value``: the two-sided two-proportion score test of ``p_variant == p_first``
  (``test_proportions_2indep(method="score", compare="diff")``; pooled variance with the
  Miettinen-Nurminen ``N / (N - 1)`` correction). It is a fixed-horizon p-value: valid when read once,
  at a sample size chosen in advance, not when watched as data arrive;
- ``always_valid_p``: the mSPRT always-valid p-value (``always_valid_p``; Johari, Koomen, Pekelis and
  Walsh 2017, 2022), which may be read at every refresh of a dashboard;
- revenue per shopper: Student t interval of a mean, ``mean +- t(n-1) * s / sqrt(n)`` with the sample
  standard deviation ``s`` computed from ``revenue`` and ``revenue_sq``; the lower bound is clipped at 0
  (revenue is never negative);
- sample ratio mismatch (SRM): Pearson chi-square goodness of fit of exposed shoppers against the
  variants' weights (``scipy.stats.chisquare``), flagged below ``SRM_ALPHA``. An SRM means assignment or
  logging is broken, and every other number of the report is suspect.

**Degenerate cases.** A statistic that cannot be computed is ``None``, never NaN or infinity:

- a variant with nobody exposed has no conversion, no revenue per shopper and no comparison (nor do the
  others when the first variant has nobody exposed);
- when the pooled conversion of the two compared variants is 0 (nobody converted on either side) or 1
  (everybody did), the data carry no evidence of a difference: ``p_value`` and ``always_valid_p`` are
  1.0 (the score statistic itself is 0/0 there);
- ``relative_lift`` is None when the first variant's conversion is 0, and ``relative_lift_ci`` also
  when the variant's own is 0 (the log interval needs both counts above 0);
- revenue per shopper has no interval with fewer than 2 exposed shoppers;
- ``srm_p_value`` is None when nobody is exposed or there is a single variant (nothing to mismatch).

Corrupt counts (negative counts or revenue, a weight <= 0, ``converted > exposed``, duplicate names, no
variant at all) raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

SRM_ALPHA = 0.001
"""The sample-ratio-mismatch threshold: an SRM p-value below it flags the experiment.

0.001 rather than 0.05 because the check runs on every experiment at every refresh and a false alarm
stops an experiment; real SRMs (a broken assignment or logging path) give p-values far smaller.
"""

MSPRT_TAU2 = 4e-4
"""The variance of the mSPRT's normal mixing distribution over the difference of conversion rates.

``tau = 0.02``: a lift of about two percentage points. Johari et al. (2017, section 4.3) show that the
mSPRT detects fastest the effects near ``tau``; shop conversion rates are a few per cent and the lifts a
recommender change is run to find are half a point to several points. Measured with ``always_valid_p``
(shoppers per arm until p < 0.05, 5 % base rate): a 0.5-point lift needs 47,455 against 43,140 with
``tau = 0.01`` (+10 %), a 1-point lift 11,356 against 10,323, while a large lift (15 % → 50 %) needs 166
against 329: a smaller ``tau`` pays little for small effects and much for large ones. Validity (the
type I error bound) holds for every ``tau2 > 0``.
"""

Interval = tuple[float, float]


@dataclass(frozen=True)
class VariantCounts:
    """What Redis holds for one variant of one experiment."""

    name: str
    weight: float
    """The variant's weight in the experiment document (> 0)."""
    exposed: int
    """Distinct shoppers shown at least one answer of this variant."""
    answers: int
    """Answers served (impressions of a whole answer)."""
    views: int
    """Attributed view events."""
    carts: int
    """Attributed add_to_cart events."""
    purchases: int
    """Attributed purchase events."""
    revenue: float
    """Sum of price * quantity of attributed purchases."""
    converted: int
    """Distinct shoppers with at least one attributed purchase (always <= exposed)."""
    revenue_sq: float
    """Sum over shoppers of (that shopper's attributed revenue) ** 2; shoppers without revenue add 0.
    For the variance of revenue per exposed shopper."""


@dataclass(frozen=True)
class VariantReport:
    """One variant's counts, rates and (except for the first variant) its comparison with the first.

    Rates are fractions (0.05 is 5 %); intervals are ``(low, high)`` at the report's confidence.
    Every statistic is None when it cannot be computed (see the module docstring).
    """

    name: str
    weight: float
    exposed: int
    answers: int
    views: int
    carts: int
    purchases: int
    revenue: float
    converted: int
    conversion: float | None
    """``converted / exposed``."""
    conversion_ci: Interval | None
    """Wilson score interval of ``conversion``."""
    revenue_per_shopper: float | None
    """``revenue / exposed``."""
    revenue_per_shopper_ci: Interval | None
    """Student t interval of ``revenue_per_shopper``, low end clipped at 0."""
    lift: float | None = None
    """``conversion - first.conversion`` (absolute, a fraction: 0.01 is one percentage point)."""
    lift_ci: Interval | None = None
    """Newcombe hybrid score interval of ``lift``."""
    relative_lift: float | None = None
    """``conversion / first.conversion - 1``."""
    relative_lift_ci: Interval | None = None
    """Log interval of the ratio of conversions, minus 1."""
    p_value: float | None = None
    """Two-sided two-proportion score test of equal conversion (fixed horizon: read once)."""
    always_valid_p: float | None = None
    """mSPRT always-valid p-value of equal conversion (may be read at any time, as often as wished)."""


@dataclass(frozen=True)
class ExperimentReport:
    """The report of one experiment: one ``VariantReport`` per variant (the first is the control) and
    the sample-ratio-mismatch check."""

    variants: tuple[VariantReport, ...]
    srm_p_value: float | None
    """Chi-square goodness of fit of exposed shoppers against the weights; None when nobody is exposed
    or there is one variant."""
    srm: bool
    """``srm_p_value < SRM_ALPHA``: exposure does not follow the weights, the report is not to be
    trusted."""
    method: str
    """One line naming the methods, shown with the report."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the same fields, intervals as ``[low, high]`` lists, statistics rounded to
        6 significant digits and money to 4 decimals; None (never NaN or infinity) where a value cannot
        be computed."""
        variants = []
        for v in self.variants:
            row: dict[str, Any] = {}
            for key, value in asdict(v).items():
                if key in _MONEY:
                    row[key] = _json_number(value, _round_money)
                elif isinstance(value, tuple):
                    row[key] = [
                        _json_number(x, _round_money if key in _MONEY_CI else _round_stat) for x in value
                    ]
                    if None in row[key]:
                        row[key] = None
                elif isinstance(value, float):
                    row[key] = _json_number(value, _round_stat)
                else:
                    row[key] = value
            variants.append(row)
        return {
            "variants": variants,
            "srm_p_value": _json_number(self.srm_p_value, _round_stat),
            "srm": self.srm,
            "method": self.method,
        }


_MONEY = frozenset({"revenue", "revenue_per_shopper"})
_MONEY_CI = frozenset({"revenue_per_shopper_ci"})


def _round_stat(x: float) -> float:
    return float(f"{x:.6g}")


def _round_money(x: float) -> float:
    return round(x, 4)


def _json_number(x: float | None, rounding: Callable[[float], float]) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(rounding(x))


def _finite(x: Any) -> float | None:
    """``x`` as a Python float, or None when it is NaN or infinite (statsmodels returns NumPy scalars)."""
    value = float(x)
    return value if math.isfinite(value) else None


def _interval(low: Any, high: Any) -> Interval | None:
    lo, hi = _finite(low), _finite(high)
    return None if lo is None or hi is None else (lo, hi)


def always_valid_p(count1: int, nobs1: int, count2: int, nobs2: int, tau2: float = MSPRT_TAU2) -> float:
    """The mSPRT always-valid p-value of ``p1 == p2`` for two independent proportions, at the current
    counts.

    Args:
        count1, nobs1: successes and trials of the variant (``nobs1 >= 1``).
        count2, nobs2: successes and trials of the control (``nobs2 >= 1``).
        tau2: variance of the normal mixing distribution over the difference ``p1 - p2`` (> 0); see
            ``MSPRT_TAU2``.

    Returns:
        ``min(1, 1 / Lambda)`` in ``[0, 1]`` (0 only by underflow), with the mixture likelihood ratio (Johari, Koomen, Pekelis
        and Walsh 2017, "Peeking at A/B tests: why it matters, and what to do about it", KDD, section 4;
        Johari et al. 2022, "Always valid inference: continuous monitoring of A/B tests", Operations
        Research 70(3))::

            Lambda = sqrt(s2 / (s2 + tau2)) * exp(tau2 * d**2 / (2 * s2 * (s2 + tau2)))

        where ``d = count1/nobs1 - count2/nobs2`` and ``s2 = pbar (1 - pbar) (1/nobs1 + 1/nobs2)`` is the
        variance of ``d`` under the null, ``pbar`` the pooled proportion. With equal ``n`` per arm this
        is the paper's ``sqrt(2 sigma2 / (2 sigma2 + n tau2)) exp(n**2 tau2 d**2 / (4 sigma2 (2 sigma2 +
        n tau2)))``. ``s2`` carries the same ``N / (N - 1)`` factor as statsmodels' score test, so the
        result is never below that test's p-value at the same counts.

        1.0 when ``pbar`` is 0 or 1 (no variance: no evidence of a difference).

    The paper's p-value is the running minimum of ``1 / Lambda`` over all looks; this value at the
    current counts is never below it, so it is valid too (conservative): the chance that it ever drops
    below ``alpha`` under the null, however often it is read, is at most ``alpha`` (asymptotically: the
    variance is a plug-in estimate).

    Raises:
        ValueError: a count outside ``0 <= count <= nobs``, ``nobs < 1`` or ``tau2 <= 0``.
    """
    if not (nobs1 >= 1 and nobs2 >= 1 and 0 <= count1 <= nobs1 and 0 <= count2 <= nobs2):
        raise ValueError(f"counts out of range: {count1}/{nobs1}, {count2}/{nobs2}")
    if not tau2 > 0:
        raise ValueError(f"tau2 must be > 0, got {tau2}")
    n = nobs1 + nobs2
    pooled = (count1 + count2) / n
    s2 = pooled * (1.0 - pooled) * (1.0 / nobs1 + 1.0 / nobs2) * n / (n - 1)
    if s2 <= 0.0:
        return 1.0
    d = count1 / nobs1 - count2 / nobs2
    log_lambda = 0.5 * math.log(s2 / (s2 + tau2)) + tau2 * d * d / (2.0 * s2 * (s2 + tau2))
    return min(1.0, math.exp(-log_lambda))


def _check(counts: Sequence[VariantCounts]) -> None:
    if not counts:
        raise ValueError("an experiment has at least one variant")
    names = [c.name for c in counts]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names: {names}")
    for c in counts:
        if not (math.isfinite(c.weight) and c.weight > 0):
            raise ValueError(f"variant {c.name!r}: weight must be > 0, got {c.weight}")
        for field in ("exposed", "answers", "views", "carts", "purchases", "converted"):
            if getattr(c, field) < 0:
                raise ValueError(f"variant {c.name!r}: {field} is negative ({getattr(c, field)})")
        for field in ("revenue", "revenue_sq"):
            value = getattr(c, field)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"variant {c.name!r}: {field} must be finite and >= 0, got {value}")
        if c.converted > c.exposed:
            raise ValueError(
                f"variant {c.name!r}: converted ({c.converted}) > exposed ({c.exposed}): corrupt counts"
            )


def report(
    counts: Sequence[VariantCounts], confidence: float = 0.95, *, tau2: float = MSPRT_TAU2
) -> ExperimentReport:
    """The report of one experiment from its variants' counts (the first variant is the control).

    Args:
        counts: one ``VariantCounts`` per variant, the control first.
        confidence: the level of every interval, in (0, 1).
        tau2: the mSPRT mixing variance (see ``MSPRT_TAU2``).

    Returns:
        An ``ExperimentReport`` with the variants in the order given; methods and degenerate cases as
        the module docstring says.

    Raises:
        ValueError: corrupt counts (see the module docstring) or ``confidence`` outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    _check(counts)

    # imported here, not at the top: statsmodels takes seconds to import and the API imports this module
    import numpy as np
    from statsmodels.stats.proportion import proportion_confint

    alpha = 1.0 - confidence
    first = counts[0]
    variants = []
    # statsmodels computes every statistic of its result (ratios, odds ratios) whatever is asked, so
    # harmless divisions by zero happen inside it; what we keep is checked for NaN below.
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, c in enumerate(counts):
            conversion = conversion_ci = rps = rps_ci = None
            if c.exposed > 0:
                conversion = c.converted / c.exposed
                conversion_ci = _interval(
                    *proportion_confint(c.converted, c.exposed, alpha=alpha, method="wilson")
                )
                rps = c.revenue / c.exposed
                rps_ci = _revenue_interval(c, confidence)
            compared: dict[str, Any] = {}
            if i > 0 and c.exposed > 0 and first.exposed > 0:
                compared = _compare(c, first, alpha, tau2)
            variants.append(
                VariantReport(
                    name=c.name,
                    weight=c.weight,
                    exposed=c.exposed,
                    answers=c.answers,
                    views=c.views,
                    carts=c.carts,
                    purchases=c.purchases,
                    revenue=c.revenue,
                    converted=c.converted,
                    conversion=conversion,
                    conversion_ci=conversion_ci,
                    revenue_per_shopper=rps,
                    revenue_per_shopper_ci=rps_ci,
                    **compared,
                )
            )
        srm_p = _srm_p_value(counts)
    return ExperimentReport(
        variants=tuple(variants),
        srm_p_value=srm_p,
        srm=srm_p is not None and srm_p < SRM_ALPHA,
        method=_method(first.name, confidence, tau2),
    )


def _compare(c: VariantCounts, first: VariantCounts, alpha: float, tau2: float) -> dict[str, Any]:
    """The comparison fields of ``VariantReport`` for variant ``c`` against ``first`` (both exposed)."""
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    both = (c.converted, c.exposed, first.converted, first.exposed)
    p1, p0 = c.converted / c.exposed, first.converted / first.exposed
    lift_ci = _interval(*confint_proportions_2indep(*both, method="newcomb", compare="diff", alpha=alpha))
    relative_lift = relative_lift_ci = None
    if first.converted > 0:
        relative_lift = p1 / p0 - 1.0
        if c.converted > 0:
            low, high = confint_proportions_2indep(*both, method="log", compare="ratio", alpha=alpha)
            relative_lift_ci = _interval(low - 1.0, high - 1.0)
    pooled = (c.converted + first.converted) / (c.exposed + first.exposed)
    p_value: float | None = 1.0
    if 0.0 < pooled < 1.0:
        p_value = _finite(test_proportions_2indep(*both, method="score", compare="diff").pvalue)
    return {
        "lift": p1 - p0,
        "lift_ci": lift_ci,
        "relative_lift": relative_lift,
        "relative_lift_ci": relative_lift_ci,
        "p_value": p_value,
        "always_valid_p": always_valid_p(*both, tau2),
    }


def _revenue_interval(c: VariantCounts, confidence: float) -> Interval | None:
    """Student t interval of revenue per exposed shopper from the sums of revenue and of its squares."""
    from scipy import stats

    n = c.exposed
    if n < 2:
        return None
    mean = c.revenue / n
    # sample variance; rounding in the stored sums can push an all-equal sample a hair below 0
    variance = max(0.0, (c.revenue_sq - n * mean * mean) / (n - 1))
    se = math.sqrt(variance / n)
    if se == 0.0:
        return (mean, mean)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * se
    return _interval(max(0.0, mean - half), mean + half)


def _srm_p_value(counts: Sequence[VariantCounts]) -> float | None:
    from scipy import stats

    total = sum(c.exposed for c in counts)
    if total == 0 or len(counts) < 2:
        return None
    weights = sum(c.weight for c in counts)
    expected = [total * c.weight / weights for c in counts]
    return _finite(stats.chisquare([c.exposed for c in counts], expected).pvalue)


def _method(first: str, confidence: float, tau2: float) -> str:
    level = f"{confidence * 100:g}%"
    return (
        f"per exposed shopper; {level} intervals: conversion Wilson, lift vs {first!r} Newcombe hybrid score, "
        f"relative lift log ratio, revenue/shopper Student t; p: two-proportion score test (fixed horizon); "
        f"always-valid p: mSPRT, normal mixture tau^2={tau2:g} (Johari et al. 2017); "
        f"SRM: chi-square of exposed vs weights, alpha {SRM_ALPHA:g}"
    )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _pp(x: float) -> str:
    return f"{x * 100:+.2f}"


def _p(x: float | None) -> str:
    if x is None:
        return "-"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def table(rep: ExperimentReport) -> str:
    """A plain-text table of a report for the CLI (``streamrec experiment report NAME``).

    One row per variant: weight, exposed, answers, views, carts, purchases, revenue, conversion with its
    interval (per cent), lift against the first variant with its interval (percentage points), the
    fixed-horizon p-value and the always-valid p-value; ``-`` where there is no value. Then the SRM line,
    a ``SAMPLE RATIO MISMATCH`` warning line when ``rep.srm``, and the methods line.
    """
    header = (
        "variant",
        "weight",
        "exposed",
        "answers",
        "views",
        "carts",
        "purchases",
        "revenue",
        "conversion [ci]",
        "lift pp [ci]",
        "p",
        "always-valid p",
    )
    rows = []
    for v in rep.variants:
        conversion = _pct(v.conversion)
        if v.conversion_ci is not None:
            conversion += f" [{v.conversion_ci[0] * 100:.2f}, {v.conversion_ci[1] * 100:.2f}]"
        lift = "-" if v.lift is None else _pp(v.lift)
        if v.lift_ci is not None:
            lift += f" [{_pp(v.lift_ci[0])}, {_pp(v.lift_ci[1])}]"
        rows.append(
            (
                v.name,
                f"{v.weight:g}",
                str(v.exposed),
                str(v.answers),
                str(v.views),
                str(v.carts),
                str(v.purchases),
                f"{v.revenue:.2f}",
                conversion,
                lift,
                _p(v.p_value),
                _p(v.always_valid_p),
            )
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows), ""]
    if rep.srm_p_value is None:
        out.append("SRM p-value: - (nobody exposed, or a single variant)")
    else:
        out.append(f"SRM p-value: {_p(rep.srm_p_value)} (exposed shoppers against the weights)")
    if rep.srm:
        out.append(
            f"WARNING: SAMPLE RATIO MISMATCH (p < {SRM_ALPHA:g}): exposure does not follow the weights; "
            "assignment or logging is broken and these results are not to be trusted."
        )
    out.append(f"methods: {rep.method}")
    return "\n".join(out)
