"""PNG images people look at: colour masks, overlays, PR curves, confusion matrices, curves.

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, Agg renderer), not
pyplot, so nothing here touches global backend state or needs a display, and it is safe to
call from worker threads. Figure sizes are fixed (no tight bounding box), so a figure's PNG
size is its `figsize * dpi`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import pathlib
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from common.files import atomic_write_bytes
from contract.names import IGNORE_LABEL
from model import metrics
from model.data.image_io import write_png

DPI = 100


def _colour_table(colours: Sequence[Sequence[int]]) -> np.ndarray:
    table = np.zeros((256, 3), np.uint8)  # ids without a colour, and 255 (ignore), are black
    colours = np.asarray(colours, dtype=np.int64).reshape(-1, 3)
    if len(colours) > IGNORE_LABEL:
        raise ValueError(f"at most {IGNORE_LABEL} colours are supported, got {len(colours)}")
    if colours.size and (colours.min() < 0 or colours.max() > 255):
        raise ValueError("colours must be [r, g, b] with values in 0..255")
    table[: len(colours)] = colours
    return table


def colourise(class_ids: np.ndarray, colours: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 class ids [H, W] -> uint8 RGB [H, W, 3]; 255 (ignore) is black."""
    class_ids = np.asarray(class_ids)
    if class_ids.ndim != 2:
        raise ValueError(f"class ids must be [H, W], got shape {class_ids.shape}")
    unknown = (class_ids >= len(colours)) & (class_ids != IGNORE_LABEL)
    if unknown.any():
        raise ValueError(f"class ids {np.unique(class_ids[unknown])[:5].tolist()} have no colour "
                         f"({len(colours)} colours given)")
    return _colour_table(colours)[class_ids.astype(np.uint8)]


def overlay(image: np.ndarray, class_ids: np.ndarray, colours: Sequence[Sequence[int]],
            alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an RGB image (uint8); ignored pixels (255) keep the image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB [H, W, 3], got shape {image.shape}")
    if image.shape[:2] != np.shape(class_ids):
        raise ValueError(f"image {image.shape[:2]} and class ids {np.shape(class_ids)} "
                         f"differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colour = colourise(class_ids, colours).astype(np.float32)
    blended = image.astype(np.float32) * (1.0 - alpha) + colour * alpha
    blended = np.where((np.asarray(class_ids) == IGNORE_LABEL)[..., None], image, blended)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_overlay(path, image: np.ndarray, class_ids: np.ndarray,
                 colours: Sequence[Sequence[int]], ground_truth: np.ndarray | None = None,
                 alpha: float = 0.5) -> None:
    """Write the prediction overlay as PNG; with `ground_truth`, the ground-truth overlay is
    stacked below it (same colours, ignored pixels left as the image)."""
    picture = overlay(image, class_ids, colours, alpha)
    if ground_truth is not None:
        truth = overlay(image, ground_truth, colours, alpha)
        picture = np.concatenate([_caption(picture, "prediction"),
                                  _caption(truth, "ground truth")], axis=0)
    write_png(path, picture)


def _caption(picture: np.ndarray, text: str) -> np.ndarray:
    """Small white-on-black caption in the top-left corner (for stacked panels)."""
    img = Image.fromarray(picture)
    draw = ImageDraw.Draw(img)
    size = max(10, min(picture.shape[:2]) // 20)
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = draw.textbbox((4, 2), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 3), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def _save_figure(fig: Figure, path, metadata: dict | None = None) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata=metadata)
    atomic_write_bytes(path, buffer.getvalue())


def save_pr_curve(path, counts_by_name: Mapping[str, "metrics.RoadCounts"],
                  title: str = "KITTI road: precision-recall") -> None:
    """Precision over recall at the devkit thresholds, one curve per name, MaxF point marked.

    The curves' points also go into the PNG as a text chunk (PR_CURVE_KEY, read back by
    `read_pr_curves`), so a report can redraw them later from the run's own files."""
    curves = {}
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.add_subplot()
    # Iso-F1 contours make the MaxF points easy to compare.
    r = np.linspace(0.01, 1, 200)
    for f in (0.2, 0.4, 0.6, 0.8, 0.9):
        with np.errstate(divide="ignore", invalid="ignore"):
            p = f * r / (2 * r - f)
        ok = (p > 0) & (p <= 1)
        ax.plot(r[ok], p[ok], color="0.85", linewidth=0.8, zorder=0)
        ax.annotate(f"F={f}", (r[ok][-1], p[ok][-1]), fontsize=7, color="0.6",
                    xytext=(-28, 2), textcoords="offset points")
    for name, counts in counts_by_name.items():
        recall, precision, _ = metrics.pr_curve(counts)
        if recall.size == 0:
            continue
        scores = metrics.kitti_scores(counts)
        (line,) = ax.plot(recall, precision, linewidth=1.5,
                          label=f"{name}: MaxF {100 * scores['MaxF']:.2f}%, "
                                f"AP {100 * scores['AP']:.2f}%")
        ax.plot([scores["REC"]], [scores["PRE"]], "o", color=line.get_color(), markersize=6)
        curves[name] = {"recall": np.round(recall, 6).tolist(),
                        "precision": np.round(precision, 6).tolist(),
                        **{k: scores[k] for k in ("MaxF", "AP", "PRE", "REC")}}
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=9)
    _save_figure(fig, path, metadata={PR_CURVE_KEY: json.dumps(metrics.json_safe(curves))})


PR_CURVE_KEY = "fcnseg-pr-curves"


def read_pr_curves(path) -> dict:
    """{name: {recall, precision, MaxF, AP, PRE, REC}} stored by save_pr_curve in its PNG;
    {} for a PNG without them (written before they were stored)."""
    with Image.open(path) as img:
        text = getattr(img, "text", {}).get(PR_CURVE_KEY)
    return json.loads(text) if text else {}


def save_confusion_matrix(path, cm: np.ndarray, class_names: Sequence[str],
                          normalize: bool = True, title: str | None = None) -> None:
    """Confusion matrix (rows ground truth, columns prediction), row-normalised by default.

    Readable from 2 to ~80 classes: the figure grows with the class count, cells carry their
    value as text up to 20 classes, label fonts shrink beyond that.
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix {cm.shape} does not match {n} class names")
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(rows > 0, cm / rows, 0.0)
    else:
        shown = cm
    side = min(max(5.0, 2.5 + 0.2 * n), 22.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of ground-truth row" if normalize else "pixels")
    font = 10 if n <= 10 else max(6.5, 11 - 0.06 * n)
    ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels=class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize
                           else "confusion matrix (pixels)"))
    if n <= 20:
        top = shown.max() if shown.size else 0
        for i in range(n):
            for j in range(n):
                value = shown[i, j]
                text = f"{value:.2f}" if normalize else f"{int(value)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=max(5, font - 2),
                        color="white" if top and value > 0.6 * top else "black")
    _save_figure(fig, path)


def _read_history(history_csv) -> dict[str, list[float]]:
    path = pathlib.Path(history_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training history not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no epochs recorded (empty history CSV)")
    columns: dict[str, list[float]] = {}
    for name in rows[0]:
        try:
            columns[name] = [float(row[name]) if row[name] not in ("", None) else math.nan
                             for row in rows]
        except ValueError:
            continue  # non-numeric column: nothing to plot
    return columns


def save_training_curves(path, history_csv) -> None:
    """One panel per quantity in a Keras CSVLogger history (loss first): train vs val_."""
    columns = _read_history(history_csv)
    epochs = columns.pop("epoch", None)
    names = [c for c in columns if not c.startswith("val_")]
    names += [c[4:] for c in columns if c.startswith("val_") and c[4:] not in columns]
    names.sort(key=lambda c: (c != "loss", c))
    if not names:
        raise ValueError(f"{history_csv}: no metric columns to plot")
    n_rows_data = len(next(iter(columns.values())))
    x = [e + 1 for e in epochs] if epochs is not None else list(range(1, n_rows_data + 1))
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.3 * nrows), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if name in columns:
            ax.plot(x, columns[name], marker=".", label="train")
        if "val_" + name in columns:
            ax.plot(x, columns["val_" + name], marker=".", label="val")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if name in ("learning_rate", "lr"):
            ax.set_yscale("log")
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=8)
    _save_figure(fig, path)
