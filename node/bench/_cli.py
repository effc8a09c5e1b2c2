"""``medledger bench``: the throughput / latency / catch-up / scale benchmark."""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx

from ledger.errors import LedgerError
from ledger.keys import KeyPair
from node.keyfile import load_key_file
from node.runner import TestnetError

from ._report import format_catchup, format_scale, format_sweep
from ._run import (
    BenchSettings,
    CatchupResult,
    ScaleRow,
    SweepResult,
    bench_command_line,
    jsonable,
    machine_info,
    run_catchup,
    run_scale,
    run_sweep,
    run_sweep_url,
)

__all__ = ["bench"]

MODES = ("sweep", "catchup", "scale", "all")


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(
            f"{what}: expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise click.BadParameter(f"{what}: expected positive numbers, got {text!r}")
    return values


def _pids(text: str, count: int) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"--pid: expected comma-separated PIDs, got {text!r}") from None
    if len(values) != count or any(v <= 0 for v in values):
        raise click.BadParameter(f"--pid: expected {count} positive PIDs (one per URL)")
    return values


def _key(path: Path) -> KeyPair:
    try:
        return load_key_file(path)
    except LedgerError as exc:
        raise click.BadParameter(f"--key {path}: {exc}") from None


def _log(message: str) -> None:
    click.echo(f"[bench {time.strftime('%H:%M:%S')}] {message}", err=True)


@click.command("bench")
@click.option(
    "--mode",
    "modes",
    type=click.Choice(MODES),
    multiple=True,
    default=("sweep",),
    show_default=True,
    help="what to run; repeat for several",
)
@click.option("--validators", "-n", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--rates",
    default="100,200,400,800,1600",
    show_default=True,
    help="offered tx/s, one phase each, in order",
)
@click.option(
    "--phase-seconds",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="each phase offers rate x this many txs",
)
@click.option(
    "--full-sweep",
    is_flag=True,
    help="offer every rate, even after the committed rate stops growing",
)
@click.option(
    "--commit-timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="seconds to wait for a phase's txs to commit after the last submit",
)
@click.option(
    "--block-interval",
    type=click.FloatRange(min=0),
    default=None,
    help="[consensus] block_interval_s for every node (default: the node's)",
)
@click.option("--catchup-blocks", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option(
    "--catchup-rate",
    type=click.FloatRange(min=1),
    default=25.0,
    show_default=True,
    help="offered tx/s while the stopped node falls behind (low: many small blocks)",
)
@click.option("--scale-validators", default="4,7,10,16", show_default=True)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="py-spy the primary and a replica in an extra saturated phase",
)
@click.option("--profile-seconds", type=click.FloatRange(min=1), default=10.0, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="also write every figure as JSON here ('-': stdout)",
)
@click.option(
    "--dir",
    "work_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where testnets are created (default: a temporary directory)",
)
@click.option("--keep", is_flag=True, help="keep the testnet directories afterwards")
@click.option(
    "--url",
    "urls",
    multiple=True,
    metavar="URL[,URL...]",
    help="bench a running network through these node APIs instead of starting one "
    "(sweep only; needs --key)",
)
@click.option(
    "--key",
    "key_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="with --url: a hospital key file that signs the load (repeat; the i-th key "
    "submits through the i-th URL)",
)
@click.option(
    "--pid",
    "pids",
    default=None,
    metavar="PID[,PID...]",
    help="with --url: the node processes, one per URL (default: found through /proc "
    "for URLs on this machine; CPU, RSS and disk are n/a for the others)",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="derives the registered patients  [default: 1; with --url: from the clock, "
    "so a second run on the same chain registers new patients]",
)
def bench(
    modes: tuple[str, ...],
    validators: int,
    rates: str,
    phase_seconds: float,
    full_sweep: bool,
    commit_timeout: float,
    block_interval: float | None,
    catchup_blocks: int,
    catchup_rate: float,
    scale_validators: str,
    profile_dir: Path | None,
    profile_seconds: float,
    json_path: Path | None,
    work_dir: Path | None,
    keep: bool,
    urls: tuple[str, ...],
    key_files: tuple[Path, ...],
    pids: str | None,
    seed: int | None,
) -> None:
    """Benchmark a local testnet: committed tx/s, latency, CPU, RSS, disk, ceiling.

    Starts VALIDATORS real node processes on loopback, signs registrations in
    separate processes before each phase (signing is not timed), and offers
    them open-loop at each of RATES through POST /v1/txs/batch. Prints one
    table per mode; --json writes the same figures machine-readably.

    With --url, the sweep targets a network that is already running; the
    hospital keys given with --key sign the load.
    """
    wanted = set(MODES[:3]) if "all" in modes else set(modes)
    url_list = [u.strip() for text in urls for u in text.split(",") if u.strip()]
    if url_list:
        if wanted != {"sweep"}:
            raise click.UsageError("--url runs the sweep only (catch-up and scale start nodes)")
        if not key_files:
            raise click.UsageError("--url needs --key: the hospital keys that sign the load")
    elif key_files or pids is not None:
        raise click.UsageError("--key and --pid go with --url")
    pid_list = _pids(pids, len(url_list)) if pids is not None else None
    if seed is None:
        seed = time.time_ns() // 1000 if url_list else 1
    sizes = tuple(int(v) for v in _floats(scale_validators, "--scale-validators"))
    settings = BenchSettings(
        validators=validators,
        rates=_floats(rates, "--rates"),
        phase_seconds=phase_seconds,
        stop_when_saturated=not full_sweep,
        commit_timeout_s=commit_timeout,
        block_interval_s=block_interval,
        seed=seed,
        profile_dir=profile_dir.resolve() if profile_dir is not None else None,
        profile_seconds=profile_seconds,
        catchup_blocks=catchup_blocks,
        catchup_rate=catchup_rate,
        scale_validators=sizes,
    )
    root = Path(tempfile.mkdtemp(prefix="medledger-bench-")) if work_dir is None else work_dir
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {
        "command": bench_command_line(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine_before": machine_info(root),
        "settings": settings.to_json(),
    }
    m = result["machine_before"]
    assert isinstance(m, dict)
    click.echo(
        f"machine: {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
        f"load average {m['load_average']}, fsync of 4 KiB {m['fsync_4k_median_ms']} ms (median)"
    )
    sweep: SweepResult | None = None
    catchup: CatchupResult | None = None
    scale: list[ScaleRow] | None = None
    try:
        if url_list:
            keys = [_key(k) for k in key_files]
            sweep = run_sweep_url(url_list, keys, settings, _log, pids=pid_list)
            click.echo(format_sweep(sweep))
        elif "sweep" in wanted:
            sweep = run_sweep(root / "sweep", settings, _log)
            click.echo(format_sweep(sweep))
        if "catchup" in wanted:
            catchup = run_catchup(root / "catchup", settings, _log)
            click.echo(format_catchup(catchup))
            if sweep is not None and sweep.saturation_tx_per_s > 0:
                times = catchup.tx_per_s / sweep.saturation_tx_per_s
                click.echo(f"catch-up tx/s / saturated commit tx/s = {times:.2f}x")
        if "scale" in wanted:
            scale = run_scale(root / "scale", settings, _log)
            click.echo(format_scale(scale))
    except (TestnetError, httpx.HTTPError) as exc:
        # Keep the files: the node logs under ROOT say why.
        raise click.ClickException(f"bench: {exc} (node logs under {root})") from None
    if not keep and work_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    result["machine_after"] = machine_info()
    result["throughput"] = None if sweep is None else sweep.to_json()
    result["catchup"] = None if catchup is None else catchup.to_json()
    if catchup is not None and sweep is not None and sweep.saturation_tx_per_s > 0:
        assert isinstance(result["catchup"], dict)
        result["catchup"]["vs_saturation"] = round(catchup.tx_per_s / sweep.saturation_tx_per_s, 2)
    result["scale"] = None if scale is None else [r.to_json() for r in scale]
    if json_path is not None:
        text = json.dumps(jsonable(result), indent=2, sort_keys=True, allow_nan=False)
        if str(json_path) == "-":
            sys.stdout.write(text + "\n")
        else:
            json_path.write_text(text + "\n")
            _log(f"wrote {json_path}")
