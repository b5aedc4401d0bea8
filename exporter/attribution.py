"""Split one sampling interval's measured energy among process groups (experiment runs).

Pure functions, no I/O: the sampler hands in what it measured, this module says who gets which joules.
The formula and its assumptions are in docs/attribution.md. The invariant every caller may rely on:
for each domain, the joules given to groups plus the unattributed joules equal the joules measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

CPU = "cpu"
MEMORY = "memory"

DOMAIN_BASIS: Mapping[str, str] = MappingProxyType({"package": CPU, "core": CPU, "uncore": CPU, "dram": MEMORY})
"""Which usage each RAPL domain is split by. Domains absent here (psys: the whole platform) stay unattributed."""


@dataclass(frozen=True)
class GroupShareBasis:
    """What one group used in the interval, in the units its shares are computed from, and whose group it is:
    when the groups claim more than the system used, one owner's excess must not shrink another's share."""

    cpu_seconds: float
    memory_bytes: float
    owner: str = ""


@dataclass(frozen=True)
class Attribution:
    """Joules per group and domain for one interval, plus what nobody was given."""

    by_group: Mapping[str, Mapping[str, float]]
    unattributed: Mapping[str, float]


def usage_shares(usage: Mapping[str, float], total: float, owners: Mapping[str, str] | None = None) -> dict[str, float]:
    """Each group's fraction of ``total``, never negative and summing to at most 1.

    Group and system counters are read at slightly different instants, so the groups can claim more than
    ``total`` by a tick or two; a root's reaper that reaped other children too claims more (docs/attribution.md).
    Then the claims are cut down to fit, owner by owner (``owners``: group -> owner, "" for groups not in it):
    every owner keeps its whole claim up to a common level, set so that the kept claims add up to ``total``, and
    an owner above it keeps the level, shared among its groups in proportion. So one owner's excess cannot shrink
    the share of an owner who claims less than the level; with one owner this is plain proportional scaling.
    """
    if total <= 0:
        return {group: 0.0 for group in usage}
    used = {group: max(0.0, amount) for group, amount in usage.items()}
    if sum(used.values()) <= total:
        return {group: amount / total for group, amount in used.items()}
    owner_of = {group: (owners or {}).get(group, "") for group in used}
    claims: dict[str, float] = {}
    for group, amount in used.items():
        claims[owner_of[group]] = claims.get(owner_of[group], 0.0) + amount
    kept = _kept_claims(claims, total)
    scale = {owner: kept[owner] / claim if claim > 0 else 0.0 for owner, claim in claims.items()}
    return {group: amount / total * scale[owner_of[group]] for group, amount in used.items()}


def _kept_claims(claims: Mapping[str, float], total: float) -> dict[str, float]:
    """Each claim cut to the level at which the cut claims add up to ``total`` (claims adding up to more)."""
    remaining = total
    ordered = sorted(claims.items(), key=lambda item: item[1])
    for index, (_, claim) in enumerate(ordered):
        level = remaining / (len(ordered) - index)
        if claim > level:
            return {owner: min(amount, level) for owner, amount in ordered}
        remaining -= claim
    return dict(claims)


def split_energy(joules: float, shares: Mapping[str, float]) -> tuple[dict[str, float], float]:
    """Joules per group for the given shares, and the unattributed rest.

    The rest absorbs floating-point rounding but is never negative: it feeds a counter, and a counter that
    steps down by 1e-13 J is a counter reset to Prometheus.
    """
    given = {group: joules * share for group, share in shares.items()}
    return given, max(0.0, joules - sum(given.values()))


def attribute_interval(
    energy_joules: Mapping[str, float],
    groups: Mapping[str, GroupShareBasis],
    system_busy_cpu_seconds: float,
    total_memory_bytes: float,
) -> Attribution:
    """Attribute one interval's energy per domain to groups by their share of CPU time or of memory.

    ``energy_joules`` maps a RAPL domain (``package``, ``dram``, ...) to the joules measured in the interval,
    summed over packages. CPU-basis domains are split by each group's CPU seconds over the system's busy CPU
    seconds; memory-basis domains by each group's resident memory over the machine's total memory.
    """
    owners = {g: u.owner for g, u in groups.items()}
    cpu = usage_shares({g: u.cpu_seconds for g, u in groups.items()}, system_busy_cpu_seconds, owners)
    memory = usage_shares({g: u.memory_bytes for g, u in groups.items()}, total_memory_bytes, owners)
    shares_by_basis = {CPU: cpu, MEMORY: memory}
    by_group: dict[str, dict[str, float]] = {group: {} for group in groups}
    unattributed: dict[str, float] = {}
    for domain, joules in energy_joules.items():
        basis = DOMAIN_BASIS.get(domain)
        if basis is None:
            unattributed[domain] = joules
            continue
        given, rest = split_energy(joules, shares_by_basis[basis])
        for group, group_joules in given.items():
            by_group[group][domain] = group_joules
        unattributed[domain] = rest
    return Attribution(by_group=by_group, unattributed=unattributed)
