"""Human-readable tables of a benchmark result (the JSON has the same figures)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._run import CatchupResult, ScaleRow, SweepResult

__all__ = ["format_catchup", "format_scale", "format_sweep"]


def _f(x: float | None, fmt: str = "{:,.1f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def format_sweep(s: SweepResult) -> str:
    lines = [f"== throughput: {s.validators} validators =="]
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
                _f(p.cpu_ms_per_tx, "{:.2f}"),
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
        f"disk: {_f(s.bytes_per_committed_tx, '{:,.0f}')} bytes per committed tx "
        f"(mean tx {_f(s.mean_tx_bytes, '{:.0f}')} bytes, {s.committed_total} txs)",
        "",
    ]
    lines += _table(
        ["node", "cpu s", "rss MB", "peak rss MB", "disk MB"],
        [
            [
                f"node{n.index}",
                _f(n.cpu_s, "{:.1f}"),
                _f(n.rss_bytes / 2**20),
                _f(n.peak_rss_bytes / 2**20),
                _f(n.disk_bytes / 2**20, "{:.2f}"),
            ]
            for n in s.nodes
        ],
    )
    for name, prof in s.profiles.items():
        lines += [
            "",
            f"profile {name} at {s.profile_rate:g} tx/s offered: {prof.samples} "
            f"samples; process on CPU {_f(prof.cpu_fraction * 100, '{:.0f}')} % of wall time",
        ]
        lines += [
            "  by package: "
            + ", ".join(f"{pkg} {share:.0%}" for pkg, share in prof.package_share[:8])
        ]
        lines += ["  our code, inclusive:"]
        lines += [f"    {share:6.1%}  {name_}" for name_, share in prof.project_share[:10]]
        lines += ["  self time:"]
        lines += [f"    {share:6.1%}  {name_}" for name_, share in prof.self_share[:12]]
    if s.notes:
        lines += ["", *(f"note: {n}" for n in s.notes)]
    return "\n".join(lines)


def format_catchup(c: CatchupResult) -> str:
    return "\n".join(
        [
            f"== catch-up: node{c.node} of {c.validators}, {c.behind_blocks} blocks "
            f"({c.behind_txs} txs) behind ==",
            f"building the lag took {c.lag_build_s:.1f}s; restart to first API answer "
            f"{c.startup_s:.2f}s",
            f"caught up in {c.catchup_s:.2f}s: {_f(c.blocks_per_s)} blocks/s, "
            f"{_f(c.tx_per_s)} tx/s; the others committed {_f(c.network_blocks_per_s, '{:.2f}')} "
            "blocks/s while it was down",
        ]
    )


def format_scale(rows: Sequence[ScaleRow]) -> str:
    out = []
    for r in rows:
        if r.sweep is None:
            out.append([str(r.validators), f"error: {r.error}", "", "", "", "", ""])
            continue
        s = r.sweep
        first = s.phases[0] if s.phases else None
        lat = first.latency_s if first is not None else {"p50": None, "p99": None}
        peak = sum(n.peak_rss_bytes for n in s.nodes) / max(1, len(s.nodes)) / 2**20
        out.append(
            [
                str(r.validators),
                _f(s.saturation_tx_per_s),
                _f(s.ceiling.tx_per_s, "{:,.0f}"),
                _f(first.offered_rate if first else None, "{:g}"),
                _f(lat["p50"], "{:.3f}"),
                _f(lat["p99"], "{:.3f}"),
                _f(peak),
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
