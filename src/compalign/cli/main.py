"""`compalign`: extract features into a cache, inspect caches, make the synthetic world, run the demo."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .common import (
    STORAGE_OPTION_HELP,
    StageProgress,
    console,
    path_or_url,
    progress_bar,
    setup_logging,
    setup_process,
    store_location,
    user_errors,
)

app = typer.Typer(help="compalign: encode images and captions once, then align and score from the cache.",
                  no_args_is_help=True)
cache_app = typer.Typer(help="Inspect feature caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@app.callback()
def _process() -> None:
    setup_process()  # before any command, so DataLoader workers fork with it

try:  # the synthetic world's commands live with the world
    from .shapes import app as shapes_app

    app.add_typer(shapes_app, name="shapes", help="The synthetic compositional world.")
except ImportError:  # pragma: no cover - only while the world is being built
    pass


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--layers takes comma-separated block indices like -1,-4 (got {text!r})") from None


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"--workers takes auto or a number (got {text!r})") from None


@app.command()
def extract(
    model: str = typer.Option(..., help="preset (clip, siglip2, pe, tiny), open_clip name, or local-dir:PATH"),
    data: str = typer.Option(..., help="data source: pairs | sugarcrepe | bivlc | karpathy | winoground | aro | "
                      "webdataset (tar shards: --root 'shards/{00000..00009}.tar') | img2dataset (its output folder)"),
    root: str = typer.Option(..., callback=path_or_url, help="where the data lives: a local folder, or an object-storage "
                             "URL (s3://bucket/prefix) for every source; webdataset: a brace "
                             "pattern, glob, folder or URL"),
    out: str = typer.Option(..., callback=path_or_url, help="the Zarr store to create (or resume): a folder, or an "
                            "object-storage URL such as s3://bucket/path.zarr"),
    pretrained: str | None = typer.Option(None, help="open_clip pretrained tag (presets bring their own; 'none' = random init)"),
    batch_size: int = typer.Option(64, help="images / captions per forward pass"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    workers: str = typer.Option("auto", help="processes decoding images and tokenising captions: auto (= CPU "
                                "cores - 1, at least 1; under torchrun the cores split among this machine's "
                                "ranks), or a number (0 = in this process)"),
    decode: str = typer.Option("exact", help="exact (the checkpoint's preprocessing) | fast (JPEGs decoded at a "
                               "reduced scale first, pixels differ slightly) | gpu (JPEGs decoded and resized on "
                               "the CUDA device)"),
    writers: int = typer.Option(2, help="threads writing shards (each writes whole shards)"),
    token_codec: str = typer.Option("none", help="compression of the float16 token arrays: none | zstd:LEVEL "
                                    "(zstd keeps ~0.92 of the bytes, at ~600 MB/s per writer thread)"),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (autocast)"),
    layers: str = typer.Option("-1", help="token layers to keep, e.g. -1,-4 (the final layer is always kept)"),
    shard_rows: int = typer.Option(256, help="rows per shard: the unit of writing and of resume"),
    overwrite: bool = typer.Option(False, help="replace the compalign store at --out instead of resuming it"),
    exif_transpose: bool = typer.Option(False, help="apply EXIF orientation before preprocessing (open_clip does not)"),
    split: str | None = typer.Option(None, help="the split to read where the source has splits (karpathy: test)"),
    segments: str = typer.Option("none", help="none | rules: also encode each caption's object, attribute and "
                                 "relation segments (for the region heads)"),
    crops: str = typer.Option("none", help="none | grid | sizes like 1,2 or 1,2,3+halves | oracle | grid+oracle: also "
                              "crop these boxes from every image and encode each (regions_crops / regions_oracle heads); "
                              "grid = 1x1, 2x2, 3x3 + 4 overlapping halves; oracle = a shapes world's true object boxes"),
    storage_option: list[str] = typer.Option([], "--storage-option", help=STORAGE_OPTION_HELP),
    root_storage_option: list[str] = typer.Option([], "--root-storage-option", help="KEY=VALUE, repeatable: fsspec "
                                                  "options for a --root URL alone (e.g. anon=true for a public bucket "
                                                  "while --out is your own); without it --root takes --storage-option's"),
    plan_cache: bool = typer.Option(True, help="remember image hashes by (path, size, mtime) in .OUT.plan-cache.sqlite "
                                    "beside the store (a store in a bucket: in ~/.cache/compalign/plan-cache/), so a "
                                    "rerun reads no unchanged image to plan"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Encode every unique image and caption of a data source once and store their embeddings."""
    setup_logging(verbose)
    from ..cache.location import storage_options
    from ..extract.config import ExtractConfig
    from ..extract.runner import extract as run

    with user_errors():
        cfg = ExtractConfig(model=model, data=data, root=root, out=out, pretrained=pretrained,
                            batch_size=batch_size, device=device, workers=_workers(workers),  # type: ignore[arg-type]
                            precision=precision, decode=decode, writers=writers, token_codec=token_codec,  # type: ignore[arg-type]
                            layers=_layers(layers), shard_rows=shard_rows, overwrite=overwrite,
                            exif_transpose=exif_transpose, split=split, segments=segments,  # type: ignore[arg-type]
                            crops=crops, storage_options=storage_options(storage_option), plan_cache=plan_cache,
                            root_storage_options=storage_options(root_storage_option) if root_storage_option else None)
        with progress_bar() as bar:
            summary = run(cfg, StageProgress(bar))
    if summary.rank:  # under torchrun rank 0 prints the summary of the whole job
        return
    out_console = Console()
    if summary.replaced:
        out_console.print(summary.replaced)
    for note in summary.repaired:
        out_console.print(f"  [yellow]repaired[/yellow] {note}")
    verb = "resumed" if summary.shards_skipped else "wrote"
    out_console.print(f"[bold]{verb}[/bold] {summary.out}: {summary.images} images, {summary.texts} captions, "
                      f"{summary.items} items in {summary.seconds:.1f}s "
                      f"({summary.shards_written} shards written, {summary.shards_skipped} already done), "
                      f"{summary.bytes_on_disk / 2**20:.1f} MiB on disk")
    for line in (summary.text_time, summary.image_time, summary.decode_check):
        if line is not None:
            out_console.print(f"  {line}", markup=False, highlight=False)
    for _origin, reason in summary.image_failures[:20]:
        out_console.print(f"  [yellow]image failed[/yellow] {reason}")
    for text, reason in summary.text_failures[:20]:
        out_console.print(f"  [yellow]caption failed[/yellow] {text!r}: {reason}")
    for p in summary.problems[:20]:
        out_console.print(f"  [yellow]skipped[/yellow] {p}")
    shown = sum(min(20, len(x)) for x in (summary.image_failures, summary.text_failures, summary.problems))
    more = len(summary.image_failures) + len(summary.text_failures) + len(summary.problems) - shown
    if more > 0:
        out_console.print(f"  … and {more} more: `compalign cache info {summary.out}`")
    if summary.images and not summary.images_ok:
        console.print(f"[red]error:[/red] every one of the {summary.images} images failed (reasons above); "
                      "the store holds no image features. Fix --root or the annotation paths and run again.")
        raise typer.Exit(1)


@cache_app.command("info")
def info(store: str = typer.Argument(..., callback=path_or_url, help="a compalign cache (Zarr folder, s3:// URL or "
                                     ".h5 export)"),
         json_out: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
         verify: bool = typer.Option(False, "--verify", help="check every done shard's files against their checksums"),
         storage_option: list[str] = typer.Option([], "--storage-option", help=STORAGE_OPTION_HELP)) -> None:
    """Backbone, counts, shapes, dtypes, bytes on disk and the failures of a cache."""
    from ..cache.info import cache_info

    with user_errors():
        d = cache_info(store_location(store, storage_option), verify=verify)
    if json_out:
        print(json.dumps(d, indent=1))
        if d.get("damaged"):
            raise typer.Exit(1)
        return
    out = Console()
    b, c = d["backbone"], d["counts"]
    out.print(f"[bold]{d['path']}[/bold] ({d['schema']}, {d['bytes_on_disk'] / 2**20:.1f} MiB on disk)")
    out.print(f"backbone: {b['name']} = {b['model_name']} / {b['pretrained']} "
              f"(open_clip {b['open_clip']}, torch {b['torch']}, image {b['image_size']}, embed {b['embed_dim']})")
    out.print(f"source: {d['source']['kind']} at {d['source']['root']} (fingerprint {d['source']['fingerprint']})")
    if d["decode_check"]:
        from ..extract.decode_check import DecodeCheck

        out.print(f"measured at extraction: {DecodeCheck(**d['decode_check']).line('its')}")
    out.print(f"images {c['images_ok']}/{c['images']} ok, texts {c['texts_ok']}/{c['texts']} ok, {c['items']} items; "
              f"shards done: images {c['image_shards_done']}/{c['image_shards']}, "
              f"texts {c['text_shards_done']}/{c['text_shards']}")
    t = Table("array", "shape", "dtype", "MiB on disk")
    for a in d["arrays"]:
        t.add_row(a["name"], str(tuple(a["shape"])), a["dtype"], f"{a['bytes'] / 2**20:.2f}")
    out.print(t)
    for kind in ("images", "texts"):
        for row, _origin, reason in d["failures"][kind]:
            out.print(f"[yellow]{kind[:-1]} row {row} failed[/yellow]: {reason}")
    for p in d["problems"]:
        out.print(f"[yellow]skipped[/yellow] {p}")
    if verify:
        for where, problems in d["damaged"].items():
            out.print(f"[red]damaged[/red] {where}: {'; '.join(problems)}")
        if d["damaged"]:
            out.print(f"rewrite the damaged shards with `{d['resume']}` (resume verifies and redoes them)")
            raise typer.Exit(1)
        out.print(f"verified: every done shard matches its checksums ({c['image_shards_done'] + c['text_shards_done']} shards)")


from .demo import demo  # noqa: E402
from .study import study  # noqa: E402

app.command()(demo)
app.command()(study)


@cache_app.command("export")
def export(store: str = typer.Argument(..., callback=path_or_url, help="a compalign Zarr cache (folder or s3:// URL)"),
           out: Path = typer.Argument(..., help="the HDF5 file to write (.h5)"),
           storage_option: list[str] = typer.Option([], "--storage-option", help=STORAGE_OPTION_HELP)) -> None:
    """Copy a cache into one HDF5 file; every compalign reader (scoring, training) accepts it."""
    from ..cache.export import export_hdf5

    with user_errors():
        path = export_hdf5(store_location(store, storage_option), out)
    Console().print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@app.command()
def backbones() -> None:
    """List the backbone presets."""
    from ..extract.presets import get_preset, list_presets

    for name in list_presets():
        p = get_preset(name)
        print(f"{name:10s} {p.model} / {p.pretrained}  {p.about}")


if __name__ == "__main__":
    app()
