"""`compalign-heads compare`: runs scored on the same items, side by side, each against the first.

Works from `score --json` files alone (their per-item records): per run a bootstrap 95% interval of every
metric, and per later run its paired difference from the first with a paired-bootstrap 95% interval and a
p-value. Runs of different benchmarks or scored on different items are refused: a paired comparison of them
would be meaningless.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ..core import InputError
from .common import user_errors

LEVEL = 0.95


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not a readable JSON file ({e}); compare reads files written by "
                         "`compalign-heads score --json`") from None
    if not isinstance(data, dict) or not all(k in data for k in ("bench", "head", "metrics", "items")):
        raise InputError(f"{path} is not a score file (no bench / head / metrics / items); compare reads files "
                         "written by `compalign-heads score --json`")
    return data


def _check(files: list[Path], runs: list[dict[str, Any]]) -> None:
    """One benchmark, the same items in the same order: else the message names both files."""
    from ..evaluate.uncertainty import check_same_items

    first, base = files[0], runs[0]
    for path, run in zip(files[1:], runs[1:]):
        if run["bench"] != base["bench"]:
            raise InputError(f"{path} is a {run['bench']} result and {first} a {base['bench']} one: compare needs "
                             "results of one benchmark")
        check_same_items(base["items"], run["items"], str(first), str(path))


def _labels(files: list[Path], runs: list[dict[str, Any]]) -> list[str]:
    """Each run's head; a head named twice (two checkpoints of one head) gets its file's name too, and a label
    still repeated (one file given twice) its position: labels name the table's columns, so they must differ."""
    heads = [r["head"] for r in runs]
    labels = [f"{h} ({p.stem})" if heads.count(h) > 1 else h for h, p in zip(heads, files)]
    return [f"{lb} #{i + 1}" if labels.count(lb) > 1 else lb for i, lb in enumerate(labels)]


def _num(v: float, signed: bool = False) -> str:
    return "—" if math.isnan(v) else f"{v:+.1f}" if signed else f"{v:.1f}"


def _ci(ci: list[float] | None, signed: bool = False) -> str:
    return "" if ci is None else f" [{_num(ci[0], signed)}, {_num(ci[1], signed)}]"


def _p(p: float | None, n: int) -> str:
    if p is None or math.isnan(p):
        return "—"
    return f"<{1 / n:.2g}" if p == 0 else f"{p:.3f}"  # 0 replicates on the other side: p is below 1/n


def _rows(runs: list[dict[str, Any]], labels: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    """One record per metric: each run's value (from its JSON) and interval, each later run's delta, CI and p."""
    from ..evaluate.uncertainty import paired_comparison

    bench = runs[0]["bench"]
    paired = [paired_comparison(bench, runs[0]["items"], r["items"], n=n, seed=seed, level=LEVEL) if n else {}
              for r in runs[1:]]
    # each run's own interval comes with the pairs (the same rows drawn): one bootstrap pass per later run, not two
    intervals = [{k: m["a_ci"] for k, m in paired[0].items()}] + [{k: m["b_ci"] for k, m in pc.items()} for pc in paired]
    rows = []
    for metric in runs[0]["metrics"]:
        row: dict[str, Any] = {"metric": metric}
        values = [float(r["metrics"].get(metric, math.nan)) for r in runs]
        for label, value, iv in zip(labels, values, intervals):
            row[label] = {"value": value, "ci": iv.get(metric)}
        for label, value, pc in zip(labels[1:], values[1:], paired):
            pm = pc.get(metric, {})
            row[f"Δ {label}"] = {"value": value - values[0], "ci": pm.get("ci"), "p": pm.get("p")}
        rows.append(row)
    return rows


def _cells(row: dict[str, Any], labels: list[str], n: int) -> list[str]:
    cells = [row["metric"]]
    cells += [_num(row[lb]["value"]) + _ci(row[lb]["ci"]) for lb in labels]
    for lb in labels[1:]:
        d = row[f"Δ {lb}"]
        cells += [_num(d["value"], signed=True) + _ci(d["ci"], signed=True), _p(d["p"], n)]
    return cells


def _header(labels: list[str]) -> list[str]:
    return ["metric", *labels, *(h for lb in labels[1:] for h in (f"Δ {lb} vs {labels[0]}", "p"))]


def _write_md(path: Path, title: str, header: list[str], body: list[list[str]]) -> None:
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    path.write_text("\n".join(lines) + "\n")


def _write_csv(path: Path, rows: list[dict[str, Any]], labels: list[str]) -> None:
    """Full-precision numbers, one column per quantity (the table's cells, unrounded)."""
    nan = float("nan")
    fields = ["metric"]
    for lb in labels:
        fields += [lb, f"{lb} ci_low", f"{lb} ci_high"]
    for lb in labels[1:]:
        fields += [f"Δ {lb}", f"Δ {lb} ci_low", f"Δ {lb} ci_high", f"Δ {lb} p"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for row in rows:
            out = [row["metric"]]
            for lb in labels:
                ci = row[lb]["ci"] or [nan, nan]
                out += [row[lb]["value"], *ci]
            for lb in labels[1:]:
                d = row[f"Δ {lb}"]
                out += [d["value"], *(d["ci"] or [nan, nan]), nan if d["p"] is None else d["p"]]
            w.writerow(out)


def _write_png(path: Path, title: str, rows: list[dict[str, Any]], labels: list[str]) -> None:
    """Grouped bars: a group per metric, a bar per run, its bootstrap interval as the error bar."""
    from .charts import grouped_bars

    grouped_bars(path, [title], [r["metric"] for r in rows], {lb: [[r[lb]["value"] for r in rows]] for lb in labels},
                 {lb: [[r[lb]["ci"] for r in rows]] for lb in labels},
                 figsize=(max(6.0, 0.45 * len(rows) * len(labels) + 2), 4.5), legend_outside=True)


def compare(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False,
                                       help="two or more files written by `compalign-heads score --json`, scored on "
                                            "the same items; each later run is compared with the first"),
    out: Path | None = typer.Option(None, "--out", help="also write PREFIX.md, PREFIX.csv and PREFIX.png"),
    bootstrap: int = typer.Option(1000, min=0, help="bootstrap replicates for the 95% intervals and p-values "
                                                    "(0: values and deltas only)"),
    seed: int = typer.Option(0, help="bootstrap seed (same files, replicates and seed: same numbers)"),
) -> None:
    """Compare runs on one benchmark: values with 95% CIs, and each run's paired delta vs the first with its p."""
    with user_errors():
        if len(files) < 2:
            raise InputError(f"compare needs two or more score files (got {len(files)})")
        runs = [_load(p) for p in files]
        _check(files, runs)
        labels = _labels(files, runs)
        rows = _rows(runs, labels, bootstrap, seed)
    how = f"{bootstrap} paired bootstrap replicates, seed {seed}" if bootstrap else "no bootstrap"
    title = f"{runs[0]['bench']} · {len(runs[0]['items'])} items · {how}"
    header, body = _header(labels), [_cells(r, labels, bootstrap) for r in rows]
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for cells in body:
        table.add_row(*cells)
    Console().print(table)
    if bootstrap:
        print(f"[lo, hi]: {LEVEL:.0%} bootstrap interval; p: two-sided paired bootstrap, vs {labels[0]}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        written = [out.with_name(out.name + ext) for ext in (".md", ".csv", ".png")]
        _write_md(written[0], title, header, body)
        _write_csv(written[1], rows, labels)
        _write_png(written[2], title, rows, labels)
        print("wrote " + ", ".join(str(p) for p in written))
