"""Guards on destructive change, judged on the plan before any write. No I/O here.

- `max_archive_rate` (syncs with `archive_missing`): a run may archive at most this share of the
  objects the sync has in Stripe (not archived yet), and nothing at all when the model is empty.
- `max_row_count_change` (when set): the model's rows, or the partition's, may differ by at most
  this share from what the same model or partition held at the sync's last run that synced.

A run refused by a guard writes nothing to Stripe: neither its archives nor its creates and updates,
since a model that lost half its rows has likely lost or mangled values in the other half too.
Thresholds come from the sync file; a person may override them for one run (the Launchpad). An
override of `max_archive_rate` to 1 (100 %) is the one way to archive everything from an empty model.
"""

from __future__ import annotations

from dataclasses import dataclass

from census_stripe.spec import SyncSpec

MAX_ARCHIVE_RATE = "max_archive_rate"
MAX_ROW_COUNT_CHANGE = "max_row_count_change"


def guards_of(spec: SyncSpec) -> list[str]:
    """The guards a sync's runs are judged by, by the setting of each: the row count always (it
    reports the counts even unset), archives for a sync that archives. Meter event syncs have none."""
    return [*([MAX_ARCHIVE_RATE] if spec.archive_missing else []), MAX_ROW_COUNT_CHANGE]


@dataclass(frozen=True)
class Threshold:
    """A guard's limit for one run: the sync file's, unless a person overrode it for this run."""

    setting: str
    in_file: float | None  # None: not checked
    override: float | None = None

    @property
    def limit(self) -> float | None:
        return self.in_file if self.override is None else self.override

    def __str__(self) -> str:
        if self.override is not None:
            return f"{self.setting} {percent(self.override)} (this run's; the sync file's is {percent(self.in_file)})"
        return f"{self.setting} {percent(self.in_file)}" if self.in_file is not None else f"{self.setting} not set"


@dataclass(frozen=True)
class Verdict:
    """A guard judged: passed or not, in words that name the counts, and the counts themselves."""

    guard: str  # the setting that sets its limit
    limit: float | None  # None: reported, never refused
    passed: bool
    text: str
    counts: dict[str, int | float]


def percent(share: float | None) -> str:
    return "(none)" if share is None else f"{share * 100:.4g} %"


def archive_verdict(archives: int, live: int, rows_read: int, plural: str, threshold: Threshold) -> Verdict:
    """`archives` of the `live` objects the sync has in Stripe, planned from a model of `rows_read` rows."""
    share = archives / live if live else 0.0
    limit = threshold.limit
    assert limit is not None, "max_archive_rate always has a value"
    would = f"would archive {archives} of {live} {plural}"
    # Only a person's one-run override to 100 % archives from an empty model: the sync file's
    # setting stands for every run, and an empty model is almost always a load that failed.
    if archives and not rows_read and not (threshold.override is not None and limit >= 1):
        passed, text = False, f"the model is empty: {would}: refused, an empty model archives nothing"
    elif share > limit:
        passed, text = False, f"{would}: refused, above {threshold}"
    else:
        passed, text = True, f"{would}: within {threshold}"
    counts = {
        "planned_archives": archives,
        "in_stripe": live,
        "archive_share": share,
        "rows_read": rows_read,
        MAX_ARCHIVE_RATE: limit,
    }
    return Verdict(MAX_ARCHIVE_RATE, limit, passed, text, counts)


def row_count_verdict(rows_read: int, last: int | None, where: str, threshold: Threshold) -> Verdict:
    """`rows_read` now against `last`, what the same model or partition (`where`, in words) held at
    the last run that synced."""
    limit = threshold.limit
    counts: dict[str, int | float] = {"rows_read": rows_read}
    now = f"{rows_read} rows in {where}"
    passed = True
    if last is None:
        text = f"{now}: no earlier sync to compare with"
    elif last == 0:
        # Any growth from nothing is an infinite share: the first rows are no deviation.
        counts["last_rows_read"] = last
        text = f"{now}, none at the last sync: nothing to compare"
    else:
        change = (rows_read - last) / last
        counts |= {"last_rows_read": last, "row_count_change": change}
        compared = f"{now}, {last} at the last sync ({change * 100:+.4g} %)"
        passed = limit is None or abs(change) <= limit
        verdict = "within" if passed else "refused, beyond"
        text = f"{compared}: {threshold}" if limit is None else f"{compared}: {verdict} {threshold}"
    if limit is not None:
        counts[MAX_ROW_COUNT_CHANGE] = limit
    return Verdict(MAX_ROW_COUNT_CHANGE, limit, passed, text, counts)
