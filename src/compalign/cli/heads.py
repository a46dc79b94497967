"""`compalign-heads`: train and score alignment heads from a cache. Never imports a backbone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ..cache.reader import CacheReader
from ..core import InputError
from ..evaluate.benchmarks import create_benchmark, list_benchmarks
from ..heads import create_head, describe_head, list_heads
from ..heads.base import HEADS
from .common import (
    STORAGE_OPTION_HELP,
    console,
    existing_store,
    path_or_url,
    setup_logging,
    setup_process,
    store_location,
    user_errors,
)
from .workspace import RUNS, find_cache, find_run, stores

app = typer.Typer(help="Train and score alignment heads from a feature cache alone.", no_args_is_help=True)


@app.callback()
def _process() -> None:
    setup_process()  # before any command, so DataLoader workers fork with it


@app.command("list")
def list_cmd() -> None:
    """List registered heads (with what they are), losses and benchmarks."""
    from ..heads.losses import list_losses

    for name in list_heads():
        print(f"{name:16s} {describe_head(name)}")
    print("losses:", ", ".join(list_losses()))
    print("benchmarks:", ", ".join(list_benchmarks()))


def _fmt(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.1f}"


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _options(pairs: list[str], what: str) -> dict[str, Any]:
    """KEY=VALUE options (values parsed as JSON where they parse: 2, 0.5, true, [..])."""
    out = {}
    for p in pairs:
        key, sep, val = p.partition("=")
        if not sep:
            raise typer.BadParameter(f"{what} takes KEY=VALUE, got {p!r}")
        out[key.strip().replace("-", "_")] = _value(val)
    return out


@app.command()
def score(
    bench: str = typer.Option(..., help=f"benchmark: {', '.join(list_benchmarks())}"),
    cache: str | None = typer.Option(None, callback=existing_store, help="the cache to score from (Zarr store, s3:// URL "
                                     "or .h5); default: the only store of the benchmark's data kind under caches/"),
    head: str | None = typer.Option(None, help="a registered head (default: global)"),
    checkpoint: Path | None = typer.Option(None, exists=True, file_okay=False, help="a RUN_DIR written by `train`; default "
                                           "for a trainable --head: the only run of that head under runs/"),
    untrained: bool = typer.Option(False, "--untrained", help="score a trainable head at its random initialisation"),
    index: str | None = typer.Option(None, help="retrieval first stage: flat (exact, default) | ivf | hnsw | auto"),
    rerank: int | None = typer.Option(None, help="retrieval: re-score each query's top K with --head / --checkpoint"),
    folds: int | None = typer.Option(None, help="--head blind: cross-validate the text-only control on the benchmark's "
                                     "own items in K folds (no train cache needed)"),
    json_out: Path | None = typer.Option(None, "--json", help="write metrics and per-item outcomes here"),
    bootstrap: int = typer.Option(1000, min=0, help="bootstrap replicates (items resampled within each subset) for "
                                  "the metrics' 95% intervals (0: none)"),
    storage_option: list[str] = typer.Option([], "--storage-option", help=STORAGE_OPTION_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score HEAD (or the trained head in CHECKPOINT) on BENCH from CACHE and print the table."""
    setup_logging(verbose)
    with user_errors():
        options = {k: v for k, v in (("index", index), ("rerank", rerank)) if v is not None}
        benchmark = create_benchmark(bench, **options)
        if cache is None:
            cache = find_cache(benchmark.source, f"--bench {bench} reads")
            console.print(f"cache: {cache}")
        if folds is not None and (head != "blind" or checkpoint is not None or untrained):
            raise InputError("--folds cross-validates the blind control: use it with --head blind alone "
                             "(no --checkpoint, no --untrained)")
        if checkpoint is None and head is not None and not untrained and folds is None and HEADS.meta(head)["trainable"]:
            checkpoint = find_run(head)
            if checkpoint is not None:
                console.print(f"checkpoint: {checkpoint}")
        if checkpoint is not None:
            from ..heads.checkpoint import load_head

            h = load_head(checkpoint)
            if head is not None and head != h.name:
                raise InputError(f"--head {head} disagrees with the checkpoint's head {h.name!r}; pass one of them")
        else:
            h = create_head(head or "global")
            if h.trainable and not untrained and folds is None:
                blind = (f" For the blind control, `--folds 5` fits it on {bench}'s own items instead."
                         if h.name == "blind" else "")
                raise InputError(f"head {h.name!r} is trainable and no --checkpoint was given: its weights would be random. "
                                 f"Train it (`compalign-heads train {h.name} --cache {cache} --out RUN_DIR`) and pass "
                                 "--checkpoint RUN_DIR, or pass --untrained to score the random initialisation on purpose."
                                 + blind)
        reader = CacheReader(store_location(cache, storage_option))
        if folds is not None:
            from ..evaluate.blind import cross_validate_blind

            result = cross_validate_blind(benchmark, reader, folds=folds)
        else:
            result = benchmark.evaluate(reader, h)
        c = result.counts
        if c.get("items") and c.get("invalid", 0) == c["items"]:
            raise InputError(f"all {c['items']} items of {cache} use a failed image or caption: nothing to score. "
                             f"See why with `compalign cache info {cache}`.")
        from ..evaluate.uncertainty import bootstrap_intervals

        intervals = bootstrap_intervals(benchmark, result.items, n=bootstrap) if bootstrap else {}
    table = Table(title=f"{bench} · head={result.head} · backbone={result.backbone}")
    table.add_column("metric")
    table.add_column("%", justify="right")
    if intervals:
        table.add_column("95% CI", justify="right")
    for name, value in result.metrics.items():
        ci = intervals.get(name)
        table.add_row(name, _fmt(value), *([f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""] if intervals else []))
    print_table(table)
    c = result.counts
    print(f"{c.get('items', 0)} items, {c.get('invalid', 0)} left out (failed image or caption)"
          + (f"; {c['bow_proof']} bag-of-words-proof (bow_proof/*)" if c.get("bow_proof") else ""))
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        out = result.to_json()
        items = out.pop("items")  # kept last, after what a reader of the file looks for first
        # BenchResult has no intervals or precision of its own: the file gets them here (scoring runs in fp32)
        out.update(precision="fp32", **({"intervals": intervals, "bootstrap": {"n": bootstrap, "seed": 0, "level": 0.95}}
                                        if intervals else {}), items=items)
        json_out.write_text(json.dumps(out, indent=1))
        print(f"wrote {json_out}")


@app.command()
def train(
    head: str = typer.Argument(..., help="a trainable registered head (tflocal, global_mlp, their variants)"),
    cache: str | None = typer.Option(None, callback=existing_store, help="a cache of (image, caption, negatives) items "
                                     "(Zarr, s3:// URL or .h5); default: the only pairs store under caches/ (else the only "
                                     "store there)"),
    out: str | None = typer.Option(None, callback=path_or_url, help="RUN_DIR: best head, resume state, log (default: "
                                   "runs/HEAD; a local folder)"),
    steps: int = typer.Option(1500, help="optimisation steps at most (early stopping may end sooner)"),
    batch_size: int = typer.Option(64, help="distinct images per step"),
    loss: str = typer.Option("infonce=1,hardneg=1", help="loss mix NAME=WEIGHT,... (compalign-heads list shows them)"),
    n_hard: int = typer.Option(2, help="hard negatives per pair, drawn from the kinds it has (0: in-batch only)"),
    hard_kinds: str = typer.Option("", help="only these negative kinds, e.g. swap_att,swap_obj (default: all)"),
    lr: float = typer.Option(1e-3, help="peak AdamW learning rate (cosine schedule)"),
    val_fraction: float = typer.Option(0.1, help="images held out for validation / early stopping"),
    eval_every: int = typer.Option(100, help="steps between validations"),
    patience: int = typer.Option(5, help="validations without improvement before stopping (0: never)"),
    seed: int = typer.Option(0, help="batch plan and split seed"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    amp: bool = typer.Option(False, help="bf16 autocast on CUDA (off: fp32 was 1.75x faster per step on an H100)"),
    set_: list[str] = typer.Option([], "--set", help="head option KEY=VALUE, e.g. --set layer=-2 --set match=max"),
    train_set: list[str] = typer.Option([], "--train-set", help="any other TrainConfig field KEY=VALUE"),
    resume: bool = typer.Option(True, help="continue RUN_DIR's last checkpoint if there is one"),
    storage_option: list[str] = typer.Option([], "--storage-option", help=STORAGE_OPTION_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train HEAD on CACHE's items (in-batch + hard negatives); the best head by validation goes to OUT."""
    setup_logging(verbose)
    from ..heads.losses import parse_losses
    from ..heads.train import TrainConfig, train_head
    from .common import progress_bar

    with user_errors():
        cfg = TrainConfig(steps=steps, batch_size=batch_size, losses=parse_losses(loss), n_hard=n_hard,
                          hard_kinds=tuple(k for k in hard_kinds.split(",") if k), lr=lr, val_fraction=val_fraction,
                          eval_every=eval_every, patience=patience, seed=seed, device=device, amp=amp)
        if train_set:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **_options(train_set, "--train-set")})
        head_cfg = _options(set_, "--set")
        if cache is None:
            cache = find_cache("pairs" if stores("pairs") else None, f"training {head}")  # training data comes as pairs
            console.print(f"cache: {cache}")
        if out is not None and "://" in out:
            raise InputError(f"--out {out}: a RUN_DIR is a local folder (checkpoints are renamed into place); only the "
                             "--cache may be in object storage")
        run_dir = Path(out) if out is not None else RUNS / head

    with progress_bar() as bar:
        task = bar.add_task(f"train {head}", total=steps, rate="")
        shown = {"val": ""}

        def progress(e: dict[str, Any]) -> None:
            if "val" in e:
                shown["val"] = f"val {e['val']['acc']:.1f} (best {e['best']:.1f} @ {e['best_step']})"
                bar.update(task, completed=e["step"], rate=f"{shown['val']}")
                return
            bar.update(task, completed=e["step"], rate=f"loss {e['loss']:.3f} · acc {e['acc']:.1f} · "
                                                        f"{e['pairs_s']:.0f} pairs/s · {shown['val']}")

        with user_errors():
            res = train_head(head, store_location(cache, storage_option), run_dir, cfg, head_config=head_cfg,
                             progress=progress, resume=resume)
    how = "stopped early" if res.stopped_early else "done"
    console.print(f"{how} after {res.steps} steps in {res.seconds:.0f}s; kept step {res.best_step}: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in res.best.items() if isinstance(v, float)))
    print(f"wrote {res.run_dir} (score it: compalign-heads score --checkpoint {res.run_dir} --bench ... --cache ...)")


def print_table(table: Table) -> None:
    from rich.console import Console

    Console().print(table)


from .compare import compare  # noqa: E402

app.command()(compare)


if __name__ == "__main__":
    app()
