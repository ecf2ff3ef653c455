"""Which trials are worth having: the quality-vs-size and quality-vs-cost frontiers, and the recommended one.

A trial is on a frontier when no other trial is at least as good in quality and at least as small (or cheap)
with one of the two strictly better. The recommended trial is the smallest artifact whose quality is within
`tolerance` of the best (then the cheaper, then the better): what a user wants who will ship the file.
"""

from __future__ import annotations

SIZE, COST = "artifact_bytes", "usd"


def quality(record: dict, objective: str, maximize: bool) -> float:
    """The objective as "higher is better"."""
    return record[objective] if maximize else -record[objective]


def scored(records: list[dict], objective: str) -> list[dict]:
    return [record for record in records if record.get(objective) is not None]


def non_dominated(records: list[dict], objective: str, maximize: bool, against: str) -> list[dict]:
    """The trials no other trial beats on both quality and `against` (size or cost), in order of `against`."""
    points = scored(records, objective)

    def dominates(a: dict, b: dict) -> bool:
        qa, qb = quality(a, objective, maximize), quality(b, objective, maximize)
        return qa >= qb and a[against] <= b[against] and (qa > qb or a[against] < b[against])

    front = [b for b in points if not any(dominates(a, b) for a in points if a is not b)]
    return sorted(front, key=lambda record: (record[against], -quality(record, objective, maximize)))


def recommended(records: list[dict], objective: str, maximize: bool, tolerance: float) -> dict | None:
    points = scored(records, objective)
    if not points:
        return None
    best = max(quality(record, objective, maximize) for record in points)
    near = [record for record in points if quality(record, objective, maximize) >= best - tolerance]
    return min(near, key=lambda record: (record[SIZE], record[COST], -quality(record, objective, maximize)))
