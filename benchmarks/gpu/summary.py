"""One table (figure | value) from the step outputs run.sh kept: `python summary.py STEPS_DIR > summary.md`.

STEPS_DIR holds env.txt, status (one `name rc seconds timeout` line per step) and NAME.txt, each step's
output (extract_overhead.py's stdout and stderr). A step that failed or ran out of time gives its status
and whatever figures it printed before.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CLIP_RETRIEVAL = 1100  # img/s: clip-retrieval's ViT-B/16 on one A100, the figure issue 23 compares with


def grab(text: str, pattern: str) -> str | None:
    m = re.search(pattern, text, re.M)
    return m.group(1) if m else None


def table(text: str, header: str) -> list[list[str]]:
    """Rows of the markdown table after the line starting with `header` (without its separator)."""
    lines = text.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    rows = []
    for line in lines[at + 2:] if at is not None else []:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def main(steps: Path) -> None:
    env = (steps / "env.txt").read_text() if (steps / "env.txt").exists() else ""
    status = {}
    for line in (steps / "status").read_text().splitlines() if (steps / "status").exists() else []:
        name, rc, secs, limit = line.split()
        status[name] = ("ok" if rc == "0" else "skipped: out of time" if rc == "skip" else "skipped: needs CUDA"
                        if rc == "nocuda" else f"timed out at {limit} s" if rc in ("124", "137") else f"failed (exit {rc})",
                        secs)
    rows = [("device", grab(env, r"^gpu: (.*)") or "?"), ("CPU cores (this process may use)", grab(env, r"^cores: (.*)") or "?"),
            ("torch / CUDA", grab(env, r"^torch: (.*)") or "?")]
    best, settings = None, None
    for name in sorted(status):
        text = (steps / f"{name}.txt").read_text() if (steps / f"{name}.txt").exists() else ""
        state, secs = status[name]
        rows.append((f"step {name}", f"{state}, {secs} s"))
        if name.startswith("extract"):
            head = grab(text, r"^backbone (.*)")
            ext, bare = grab(text, r"^extraction: +([\d.]+)"), grab(text, r"^bare forward loop: ([\d.]+)")
            if head and ext and bare:
                f = {k: grab(head, rf"{k} (\S+?),") for k in ("batch", "workers", "writers", "device")}
                f["precision"] = grab(head, r"precision (\w+)")
                if settings is None:
                    settings = (f"{head.split(' ')[0]} (random init), {f['precision']}, batch {f['batch']}, "
                                f"{f['workers']} decode workers, {f['writers']} writers, device {f['device']}")
                    rows.append(("extraction settings (every extraction step)", settings))
                size, decode = grab(head, r"images (\d+x\d+)"), grab(head, r"decode (\w+)")
                label = f"decode {decode}, {size} JPEGs"
                rows.append((f"bare forward img/s ({label} step)", f"{float(bare):,.0f}"))
                rows.append((f"**extraction img/s, {label}**", f"**{float(ext):,.0f}**"))
                rows.append((f"ratio extraction / bare, {label} (target >= 0.90)",
                             grab(text, r"^ratio extraction / bare: ([\d.]+)")))
                spent = grab(text, r"^where the time went, last run: image stage: [^:]*: (.*)")
                rows.append((f"where the time went, {label}", spent))
                rows.append((f"where the time went, captions of the {label} step",
                             grab(text, r"^where the time went, last run's captions: (text stage: .*)")))
                rows.append((f"captions: bare text forward vs text stage, {label} step",
                             grab(text, r"^captions \(\d+ per image\): (bare text forward .*)")))
                same = grab(text, r"^stored global vs the bare loop's forward of the same pixels: (.*)")
                if same:
                    rows.append((f"stored globals vs the bare forward, {label}", same))
                if size == "640x480" and (best is None or float(ext) > best[0]):
                    best = (float(ext), f"decode {decode}")
        elif name == "sync-check":
            head = grab(text, r"^sync check: (.*)")
            sites = re.findall(r"^ +(\d+)  (.*)", text, re.M)
            rows.append(("calls that made the host wait for the device (one extraction)", head))
            if sites:
                rows.append(("... by compalign line (count site)", "; ".join(f"{c} {s}" for c, s in sites[:6])))
        else:
            path = table(text, "| decode | workers |")
            for decode in dict.fromkeys(r[0] for r in path):
                got = [r for r in path if r[0] == decode]
                rows.append((f"data path img/s, decode {decode}, by workers {'/'.join(r[1] for r in got)}",
                             " / ".join(r[2] for r in got)))
            for decode, figures in re.findall(r"^--decode (fast|gpu) vs exact on [^:]*: (.*)", text, re.M):
                rows.append((f"decode {decode} vs exact (pixels, features)", figures))
            tok = table(text, "| workers | captions/s |")
            if tok:
                rows.append((f"captions tokenised /s (lengths, then ids), by workers {'/'.join(r[0] for r in tok)}",
                             " / ".join(r[1] for r in tok)))
                rows.append(("captions tokenised /s before (in the main process, two passes to measure)",
                             grab(text, r"^tokenising before captions.py [^:]*: ([\d,]+)")))
            whole = grab(text, r"^whole extraction, zero-cost backbone \((.*)")
            if whole:
                rows.append((f"whole extraction, zero-cost backbone ({whole.split(')')[0]}) (img/s)",
                             grab(whole, r": (\d+) images/s")))
            spent = grab(text, r"^where the time went, zero-cost backbone: image stage: [^:]*: (.*)")
            if spent:
                rows.append(("where the time went, zero-cost backbone", spent))
            rows.append(("where the time went, zero-cost backbone's captions",
                         grab(text, r"^where the time went, zero-cost backbone's captions[^:]*: (text stage: .*)")))
            w = table(text, "| writers | MB/s |")
            if w:
                rows.append((f"shard writers MB/s (raw float16 tokens), by threads {'/'.join(r[0] for r in w)}",
                             " / ".join(r[1] for r in w)))
    if best:
        rows.append((f"**extraction per GPU / clip-retrieval's {CLIP_RETRIEVAL:,} img/s (ViT-B/16, one A100)**",
                     f"**{best[0] / CLIP_RETRIEVAL:.2f}x** (the best 640x480 step: {best[0]:,.0f} img/s, {best[1]})"))
    print("| figure | value |")
    print("|---|---|")
    for k, v in rows:
        v = "-" if v is None else v.replace("|", "\\|")  # a cell's own bars ("max |diff|") would split it
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
