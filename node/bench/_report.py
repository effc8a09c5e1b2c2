"""Human-readable tables of a benchmark result (the JSON has the same figures)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._profile import Profile
from ._run import CatchupResult, ScaleRow, SweepResult, mean_peak_rss

__all__ = ["format_catchup", "format_scale", "format_sweep"]


def _f(x: float | None, fmt: str = "{:,.1f}", missing: str = "-") -> str:
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _mb(n: int | None, fmt: str = "{:,.1f}") -> str:
    """Bytes as MB; "n/a" when the figure could not be measured (process not local)."""
    return "n/a" if n is None else fmt.format(n / 2**20)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def format_sweep(s: SweepResult) -> str:
    where = "" if s.target == "local testnet" else f" at {s.target}"
    lines = [f"== throughput: {s.validators} validators{where} =="]
    rows = []
    for p in s.phases:
        lat = p.latency_s
        rows.append(
            [
                _f(p.offered_rate, "{:g}"),
                str(p.offered),
                str(p.accepted),
                str(p.committed),
                _f(p.committed_tx_per_s),
                _f(lat["p50"], "{:.3f}"),
                _f(lat["p95"], "{:.3f}"),
                _f(lat["p99"], "{:.3f}"),
                str(p.blocks),
                str(p.view_changes),
                _f(p.cpu_ms_per_tx, "{:.2f}", missing="n/a"),
                "yes" if p.saturated else "no",
            ]
        )
    lines += _table(
        [
            "offered/s",
            "offered",
            "accepted",
            "committed",
            "committed/s",
            "p50 s",
            "p95 s",
            "p99 s",
            "blocks",
            "views",
            "cpu ms/tx/node",
            "saturated",
        ],
        rows,
    )
    c = s.ceiling
    ratio = s.saturation_tx_per_s / c.tx_per_s
    lines += [
        "",
        f"committed tx/s at saturation: {_f(s.saturation_tx_per_s)}"
        + ("" if s.saturated else "  (not reached: offer higher rates)"),
        f"ceiling: {c.verifications_per_s_per_core:,.0f} ed25519 verifications/s/core x "
        f"{c.cores} cores / {c.validators} validators = {c.tx_per_s:,.0f} tx/s; "
        f"achieved {_f(ratio * 100, '{:.2f}')} % of it",
        f"disk: {_f(s.bytes_per_committed_tx, '{:,.0f}', missing='n/a')} bytes per committed tx "
        f"(mean tx {_f(s.mean_tx_bytes, '{:.0f}')} bytes, {s.committed_total} txs)",
        "",
    ]
    lines += _table(
        ["node", "cpu s", "rss MB", "peak rss MB", "disk MB"],
        [
            [
                f"node{n.index}",
                _f(n.cpu_s, "{:.1f}", missing="n/a"),
                _mb(n.rss_bytes),
                _mb(n.peak_rss_bytes),
                _mb(n.disk_bytes, "{:.2f}"),
            ]
            for n in s.nodes
        ],
    )
    for name, prof in s.profiles.items():
        lines += ["", *_profile_lines(f"{name} at {s.profile_rate:g} tx/s offered", prof)]
    if s.notes:
        lines += ["", *(f"note: {n}" for n in s.notes)]
    return "\n".join(lines)


def _profile_lines(what: str, prof: Profile) -> list[str]:
    lines = [
        f"profile {what}: {prof.samples} samples; process on CPU "
        f"{_f(prof.cpu_fraction * 100, '{:.0f}')} % of wall time",
        "  by package: " + ", ".join(f"{pkg} {share:.0%}" for pkg, share in prof.package_share[:8]),
        "  our code, inclusive:",
    ]
    lines += [f"    {share:6.1%}  {name_}" for name_, share in prof.project_share[:10]]
    lines += ["  self time:"]
    lines += [f"    {share:6.1%}  {name_}" for name_, share in prof.self_share[:12]]
    return lines


def format_catchup(c: CatchupResult) -> str:
    cpu = ", ".join(_f(x, "{:.1f}", missing="n/a") for x in c.cpu_s)
    lines = [
        f"== catch-up: node{c.node} of {c.validators}, {c.behind_blocks} blocks "
        f"({c.behind_txs} txs) behind ==",
        f"building the lag took {c.lag_build_s:.1f}s; restart to first API answer "
        f"{c.startup_s:.2f}s",
        f"caught up in {c.catchup_s:.2f}s: {_f(c.blocks_per_s)} blocks/s, "
        f"{_f(c.tx_per_s)} tx/s; the others committed {_f(c.network_blocks_per_s, '{:.2f}')} "
        "blocks/s while it was down",
        f"CPU seconds per node during the catch-up: {cpu}",
    ]
    if c.profile is not None:
        lines += ["", *_profile_lines(f"node{c.node} catching up", c.profile)]
    lines += [f"note: {n}" for n in c.notes]
    return "\n".join(lines)


def format_scale(rows: Sequence[ScaleRow]) -> str:
    out = []
    for r in rows:
        if r.sweep is None:
            out.append([str(r.validators), f"error: {r.error}", "", "", "", "", ""])
            continue
        s = r.sweep
        first = s.phases[0] if s.phases else None
        lat = first.latency_s if first is not None else {"p50": None, "p99": None}
        peak = mean_peak_rss(s)
        out.append(
            [
                str(r.validators),
                _f(s.saturation_tx_per_s),
                _f(s.ceiling.tx_per_s, "{:,.0f}"),
                _f(first.offered_rate if first else None, "{:g}"),
                _f(lat["p50"], "{:.3f}"),
                _f(lat["p99"], "{:.3f}"),
                _mb(peak),
            ]
        )
    return "\n".join(
        [
            "== scale ==",
            *_table(
                [
                    "validators",
                    "saturation tx/s",
                    "ceiling tx/s",
                    "at tx/s",
                    "p50 s",
                    "p99 s",
                    "peak rss MB",
                ],
                out,
            ),
        ]
    )
