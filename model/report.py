"""report.html: one page per evaluation run, and a page comparing two runs on the same images.

    python -m model.report DIR                              # (re)build DIR/report.html
    python -m model.report compare RUN_A RUN_B --output DIR # DIR/compare.html

DIR is a folder model.evaluate wrote (--output) or a Beam run's published folder. The page
is built from the run's own files only (metrics.json, image_scores*.jsonl, image_overlays/,
the PR-curve and confusion-matrix PNGs, run_info.json, and the Beam job's summary.json and
dead_letter*.jsonl), so it can be rebuilt at any time, and it opens from disk with no
network: styles and script are inline, images are files of the folder. The gallery holds
every scored image, worst first (model/image_scores.py says how each is scored), 100 a page.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import io
import json
import pathlib
import shlex
import shutil
import sys
from typing import Optional, Sequence

from common import cli
from common.files import atomic_write_bytes, atomic_write_text
from model import image_scores

REPORT = "report.html"
COMPARE = "compare.html"
RUN_INFO = "run_info.json"
METRICS = "metrics.json"
SUMMARY = "summary.json"              # the Beam job's
DEAD_LETTERS_GLOB = "dead_letter*.jsonl"
PR_CURVES = (("kitti", "pr_curve.png", "perspective view"),
             ("kitti_bev", "pr_curve_bev.png", "bird's-eye view (what the benchmark ranks)"))
CONFUSION_PNG = "confusion_matrix.png"
KITTI_COLUMNS = ("MaxF", "AP", "PRE", "REC", "FPR", "FNR", "IoU")
PER_PAGE = 100
TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"


# --- what a run says about itself ---------------------------------------------------------

def write_run_info(folder, **info) -> dict:
    """run_info.json: what the header shows that no other file of the run says (the model,
    the command, the date). Values of None are left out."""
    info = {k: v for k, v in info.items() if v is not None}
    info.setdefault("date", datetime.datetime.now(datetime.timezone.utc)
                    .strftime("%Y-%m-%d %H:%M UTC"))
    info.setdefault("command", _command())
    atomic_write_text(pathlib.Path(folder) / RUN_INFO, json.dumps(info, indent=2) + "\n")
    return info


def _command() -> str:
    """This process's command line, as typed: `python -m model.evaluate ...`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        program = ["python", "-m", spec.name.removesuffix(".__main__")]
    else:
        program = ["python", sys.argv[0]]
    return " ".join(shlex.quote(a) for a in [*program, *sys.argv[1:]])


def model_description(config: dict, source: Optional[dict] = None) -> dict:
    """{name, version, variant, inference_size, path} of an evaluated model: from the export
    layout (models/<name>/<version>) or the checkpoint's run folder."""
    source = source or {}
    described = {"variant": config.get("variant") or "fcn8s",
                 "inference_size": source.get("inference_size") or config.get("inference_size")
                 or config.get("image_size")}
    if source.get("saved_model"):
        version = pathlib.Path(source["saved_model"])
        described.update(name=version.parent.name, version=version.name, path=str(version))
    elif source.get("checkpoint"):
        checkpoint = pathlib.Path(source["checkpoint"])
        described.update(name=checkpoint.parent.parent.name or checkpoint.stem,
                         version=checkpoint.name, path=str(checkpoint))
    return described


def _read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _dead_letters(folder: pathlib.Path) -> list[dict]:
    letters = []
    for path in sorted(glob.glob(str(folder / DEAD_LETTERS_GLOB))):
        with open(path, encoding="utf-8") as f:
            letters += [json.loads(line) for line in f if line.strip()]
    return sorted(letters, key=lambda d: str(d.get("path")))


def run_folder(folder) -> pathlib.Path:
    """A run folder as given, or the published run of a Beam job's --output (its LATEST)."""
    folder = pathlib.Path(folder)
    pointer = folder / "LATEST"
    if pointer.is_file() and not (folder / METRICS).is_file():
        return folder / "runs" / pointer.read_text().strip()
    return folder


def load_run(folder) -> dict:
    """Everything the page shows, read from the run's files."""
    folder = run_folder(folder)
    if not folder.is_dir():
        raise cli.UserError(folder, "no such run folder")
    metrics = _read_json(folder / METRICS)
    records = image_scores.read_records(folder)
    if not metrics and not records:
        raise cli.UserError(folder, f"not an evaluation run (no {METRICS} and no "
                                    f"{image_scores.RECORDS_GLOB})")
    info = _read_json(folder / RUN_INFO)
    summary = _read_json(folder / SUMMARY)
    dead = _dead_letters(folder)
    return {"folder": folder, "metrics": metrics, "records": image_scores.worst_first(records),
            "info": info, "summary": summary, "dead_letters": dead,
            "figures": {f for f in (CONFUSION_PNG, *(p for _, p, _ in PR_CURVES))
                        if (folder / f).is_file()}}


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _header(run: dict) -> list[tuple[str, str]]:
    """(label, value) rows of the page header."""
    info, metrics, summary = run["info"], run["metrics"], run["summary"]
    model = info.get("model") or {}
    size = model.get("inference_size")
    rows = [("model", " ".join(str(v) for v in (model.get("name"), model.get("version") and
                                                f"version {model['version']}") if v)
             or summary.get("model") or metrics.get("saved_model")
             or metrics.get("checkpoint") or "–"),
            ("variant", model.get("variant") or "–"),
            ("inference geometry", "x".join(map(str, size)) if isinstance(size, list)
             else str(size or "–")),
            ("dataset", " ".join(str(v) for v in (info.get("dataset") or metrics.get("dataset")
                                                  or summary.get("dataset"),
                                                  metrics.get("split")) if v) or "–")]
    task = metrics.get("task") or summary.get("task")
    if task:
        rows.append(("task", task))
    if metrics.get("coco_protocol"):
        rows.append(("protocol", metrics["coco_protocol"]))
    dead = len(run["dead_letters"])
    seconds = info.get("seconds") or {}
    if seconds.get("run"):
        rows.append(("report cost", f"{seconds['report']:.1f} s of a {seconds['run']:.1f} s "
                                    f"run ({100 * seconds['report'] / seconds['run']:.1f} %)"))
    rows += [("date", info.get("date") or "–"), ("command", info.get("command") or "–"),
             ("images", f"{len(run['records'])} scored, {dead} dead letter"
                        f"{'' if dead == 1 else 's'}")]
    return rows


def _kitti_tables(metrics: dict) -> list[dict]:
    tables = []
    for key, png, view in PR_CURVES:
        if key in metrics:
            groups = sorted(metrics[key], key=lambda g: (g == "overall", g))  # overall last
            rows = [{"name": name, "images": metrics[key][name].get("num_images"),
                     "cells": [_pct(metrics[key][name].get(c)) for c in KITTI_COLUMNS]}
                    for name in groups]
            tables.append({"view": view, "png": png, "rows": rows})
    return tables


def _class_table(metrics: dict) -> list[tuple[str, str]]:
    iou = metrics.get("per_class_iou") or {}
    return [(name, _pct(v)) for name, v in
            sorted(iou.items(), key=lambda kv: -1 if kv[1] is None else kv[1], reverse=True)]


def _figures(record: dict) -> list[list[str]]:
    """(label, value) pairs shown under an image in the gallery."""
    if record.get("score_name") == "F":
        pairs = [("F", record.get("F")), ("PRE", record.get("PRE")), ("REC", record.get("REC")),
                 ("IoU", record.get("IoU"))]
        if "F_bev" in record:
            pairs.append(("BEV F", record.get("F_bev")))
    else:
        pairs = [("mIoU", record.get("mIoU")), ("pixel acc.", record.get("pixel_accuracy"))]
    return [[label, _pct(value)] for label, value in pairs]


def _card(record: dict, images: list[dict]) -> dict:
    return {"image": record["image"], "category": record.get("category") or "",
            "score": record.get("score"), "figures": _figures(record), "images": images}


def _overlays(record: dict, prefix: str = "") -> list[dict]:
    out = [{"src": prefix + record["overlay"], "alt": f"{record['image']} perspective"}]
    if record.get("overlay_bev"):
        out.append({"src": prefix + record["overlay_bev"], "alt": f"{record['image']} BEV",
                    "bev": True})
    return out


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env


def build(folder) -> pathlib.Path:
    """Write <folder>/report.html from the run's files; returns its path."""
    run = load_run(folder)
    metrics = run["metrics"]
    records = run["records"]
    score_name = records[0].get("score_name", "score") if records else "score"
    gallery = {"cards": [_card(r, _overlays(r)) for r in records], "per_page": PER_PAGE,
               "score_name": score_name,
               "categories": sorted({r.get("category") for r in records if r.get("category")}),
               "sorts": [{"id": "worst", "label": "worst first", "field": "score"},
                         {"id": "best", "label": "best first", "field": "score",
                          "descending": True},
                         {"id": "name", "label": "name", "field": "image"}]}
    html = _environment().get_template("report.html.j2").render(
        title=f"fcnseg report: {dict(_header(run))['model']}",
        header=_header(run), kitti_tables=_kitti_tables(metrics),
        class_table=_class_table(metrics) if "kitti" not in metrics else [],
        summary=[("mean IoU", _pct(metrics.get("mean_iou"))),
                 ("pixel accuracy", _pct(metrics.get("pixel_accuracy"))),
                 ("mean accuracy", _pct(metrics.get("mean_accuracy")))],
        confusion=CONFUSION_PNG if CONFUSION_PNG in run["figures"] else None,
        pr_curves=[(png, view) for _, png, view in PR_CURVES if png in run["figures"]],
        gallery=gallery, dead_letters=run["dead_letters"])
    path = run["folder"] / REPORT
    atomic_write_text(path, html)
    return path


# --- two runs side by side ----------------------------------------------------------------

def _delta(a, b) -> dict:
    delta = None if a is None or b is None else b - a
    return {"a": _pct(a), "b": _pct(b), "delta": "–" if delta is None else f"{100 * delta:+.2f}",
            "sign": 0 if not delta else (1 if delta > 0 else -1)}


def _delta_tables(metrics_a: dict, metrics_b: dict) -> list[dict]:
    """Tables of the scores both runs have: per row, each metric's A, B and B - A."""
    tables = []
    for key, _, view in PR_CURVES:
        groups = [g for g in sorted(metrics_a.get(key, {}), key=lambda g: (g == "overall", g))
                  if g in metrics_b.get(key, {})]
        if groups:
            columns = ("MaxF", "AP", "IoU")
            tables.append({"title": f"Road scores (KITTI devkit method), {view}",
                           "metrics": columns, "rows": [
                {"name": g, "cells": [_delta(metrics_a[key][g].get(c), metrics_b[key][g].get(c))
                                      for c in columns]} for g in groups]})
    columns = ("mean_iou", "pixel_accuracy")
    tables.append({"title": "Segmentation", "metrics": ["mean IoU", "pixel accuracy"],
                   "rows": [{"name": "all", "cells": [_delta(metrics_a.get(c), metrics_b.get(c))
                                                      for c in columns]}]})
    if "kitti" not in metrics_a:
        iou_a, iou_b = metrics_a.get("per_class_iou", {}), metrics_b.get("per_class_iou", {})
        tables.append({"title": "Per-class IoU", "metrics": ["IoU"], "rows": [
            {"name": name, "cells": [_delta(iou_a[name], iou_b[name])]}
            for name in iou_a if name in iou_b]})
    return tables


def _overlaid_pr_curves(run_a: dict, run_b: dict, labels, output: pathlib.Path) -> list:
    """PR curves of the two runs in one figure per view (overall curve of each)."""
    from matplotlib.figure import Figure

    from model import plots

    written = []
    for _, png, view in PR_CURVES:
        curves = [plots.read_pr_curves(run["folder"] / png) if png in run["figures"] else {}
                  for run in (run_a, run_b)]
        if not all(curves):
            continue
        fig = Figure(figsize=(7, 6), layout="constrained")
        ax = fig.add_subplot()
        for label, curve, style in zip(labels, curves, ("-", "--")):
            name = "overall" if "overall" in curve else sorted(curve)[0]
            c = curve[name]
            (line,) = ax.plot(c["recall"], c["precision"], style, linewidth=1.6,
                              label=f"{label} {name}: MaxF {_pct(c['MaxF'])}%, "
                                    f"AP {_pct(c['AP'])}%")
            ax.plot([c["REC"]], [c["PRE"]], "o", color=line.get_color(), markersize=6)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"precision-recall, {view}")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize=9)
        name = f"compare_{png}"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=plots.DPI)
        atomic_write_bytes(output / name, buffer.getvalue())
        written.append((name, view))
    return written


def _same_images(run_a: dict, run_b: dict) -> None:
    names_a = {r["image"] for r in run_a["records"]}
    names_b = {r["image"] for r in run_b["records"]}
    if names_a != names_b or not names_a:
        only_a, only_b = sorted(names_a - names_b), sorted(names_b - names_a)
        why = (f"the runs scored different images ({len(names_a)} and {len(names_b)}; "
               f"{len(only_a)} only in the first, e.g. {only_a[:3]}, {len(only_b)} only in "
               f"the second, e.g. {only_b[:3]})") if names_a or names_b else "no scored images"
        raise cli.UserError(f"{run_a['folder']} vs {run_b['folder']}", why)
    kinds = {r.get("score_name") for r in run_a["records"] + run_b["records"]}
    if len(kinds) > 1:
        raise cli.UserError(f"{run_a['folder']} vs {run_b['folder']}",
                            f"the runs are scored differently ({' and '.join(sorted(kinds))})")


def compare(folder_a, folder_b, output) -> pathlib.Path:
    """Write <output>/compare.html (with copies of both runs' overlays); returns its path."""
    run_a, run_b = load_run(folder_a), load_run(folder_b)
    _same_images(run_a, run_b)
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    labels = ("A", "B")
    by_name_b = {r["image"]: r for r in run_b["records"]}
    cards = []
    for ra in run_a["records"]:
        rb = by_name_b[ra["image"]]
        images = []
        for label, run, record in zip(labels, (run_a, run_b), (ra, rb)):
            for overlay in _overlays(record):
                target = f"{label.lower()}/{overlay['src']}"
                (output / target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run["folder"] / overlay["src"], output / target)
                images.append({**overlay, "src": target, "alt": f"{label}: {overlay['alt']}",
                               "caption": label})
        a, b = ra.get("score"), rb.get("score")
        delta = None if a is None or b is None else b - a
        cards.append({"image": ra["image"], "category": ra.get("category") or "",
                      "score": delta, "abs_delta": None if delta is None else abs(delta),
                      "figures": [[f"{ra.get('score_name', 'score')} A", _pct(a)],
                                  [f"{rb.get('score_name', 'score')} B", _pct(b)],
                                  ["B − A", "–" if delta is None else f"{100 * delta:+.2f}"]],
                      "images": images, "pair": True})
    gallery = {"cards": cards, "per_page": PER_PAGE, "score_name": "B − A",
               "categories": sorted({c["category"] for c in cards if c["category"]}),
               "sorts": [{"id": "difference", "label": "largest difference",
                          "field": "abs_delta", "descending": True},
                         {"id": "worse", "label": "B worse first", "field": "score"},
                         {"id": "better", "label": "B better first", "field": "score",
                          "descending": True},
                         {"id": "name", "label": "name", "field": "image"}]}
    html = _environment().get_template("compare.html.j2").render(
        title="fcnseg comparison", runs=[
            {"label": label, "folder": str(run["folder"]), "header": _header(run)}
            for label, run in zip(labels, (run_a, run_b))],
        delta_tables=_delta_tables(run_a["metrics"], run_b["metrics"]),
        pr_curves=_overlaid_pr_curves(run_a, run_b, labels, output), gallery=gallery)
    path = output / COMPARE
    atomic_write_text(path, html)
    return path


# --- command line -------------------------------------------------------------------------

def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        parser = cli.ArgumentParser(prog="python -m model.report compare",
                                    description="Two runs on the same images, side by "
                                                "side: DIR/compare.html")
        parser.add_argument("run_a", metavar="RUN_A")
        parser.add_argument("run_b", metavar="RUN_B")
        parser.add_argument("--output", required=True, help="folder for compare.html")
        args = parser.parse_args(argv[1:])
        print(f"wrote {compare(args.run_a, args.run_b, args.output)}")
        return 0
    parser = cli.ArgumentParser(prog="python -m model.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="DIR", help="an evaluation output or Beam run folder")
    args = parser.parse_args(argv)
    print(f"wrote {build(args.run)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
