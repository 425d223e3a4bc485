"""Look into a COCO annotation file before training on it.

    python -m model.data.coco_explore counts --annotations A.json
    python -m model.data.coco_explore images --annotations A.json --categories person dog [--all]
    python -m model.data.coco_explore grid --annotations A.json --images DIR \\
        --categories person dog --out grid.png [--n 16]
"""
from __future__ import annotations

import math
import pathlib
import sys
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common import cli
from contract.names import IGNORE_LABEL
from model.data import palette
from model.data.coco import load_coco, select_categories, semantic_mask
from model.data.image_io import read_image

__all__ = ["category_counts", "images_with", "render_grid", "main"]


def category_counts(coco) -> list[dict]:
    """Per category: instances, crowd instances and images, most instances first."""
    inst, crowd, imgs = Counter(), Counter(), {}
    for ann in coco.dataset["annotations"]:
        cid = ann["category_id"]
        (crowd if ann.get("iscrowd", 0) else inst)[cid] += 1
        imgs.setdefault(cid, set()).add(ann["image_id"])
    rows = [{"id": c["id"], "name": c["name"], "instances": inst[c["id"]],
             "crowd": crowd[c["id"]], "images": len(imgs.get(c["id"], ()))}
            for c in coco.dataset["categories"]]
    return sorted(rows, key=lambda r: (-r["instances"], -r["images"], r["name"]))


def images_with(coco, names, require_all: bool = False) -> list[dict]:
    """Image infos holding any (or, with require_all, every) of the named categories."""
    cat_ids, _ = select_categories(coco, list(names))
    sets = [set(coco.getImgIds(catIds=[cid])) for cid in cat_ids]
    ids = set.intersection(*sets) if require_all else set.union(*sets)
    return sorted(coco.loadImgs(list(ids)), key=lambda i: i["file_name"])


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def render_grid(coco, image_dir, names, out_path, n: int = 16, require_all: bool = False,
                cell=(320, 240), alpha: float = 0.55) -> pathlib.Path:
    """Save a grid of up to n images with their class masks drawn over, plus a legend."""
    cat_ids, class_names = select_categories(coco, list(names) if names else "all")
    infos = (images_with(coco, class_names[1:], require_all) if names
             else sorted(coco.dataset["images"], key=lambda i: i["file_name"]))
    infos = [i for i in infos if (pathlib.Path(image_dir) / i["file_name"]).is_file()][:n]
    if not infos:
        raise ValueError(f"no images in {image_dir} hold the categories {list(names or [])}")
    colours = np.array(palette(len(class_names)), np.float32)
    lut = {cid: k + 1 for k, cid in enumerate(cat_ids)}
    cw, ch = cell
    cols = min(4, len(infos))
    rows = math.ceil(len(infos) / cols)
    present = set()
    tiles = []
    for info in infos:
        img = read_image(pathlib.Path(image_dir) / info["file_name"]).astype(np.float32)
        mask = semantic_mask(coco, info, lut)
        present.update(int(v) for v in np.unique(mask) if 0 < v < IGNORE_LABEL)
        fg = (mask > 0) & (mask < IGNORE_LABEL)
        img[fg] = (1 - alpha) * img[fg] + alpha * colours[mask[fg]]
        img[mask == 255] = 0.5 * img[mask == 255] + 0.5 * 255  # ignore: washed out white
        tile = Image.fromarray(img.astype(np.uint8))
        tile.thumbnail((cw, ch))
        canvas = Image.new("RGB", (cw, ch), (30, 30, 30))
        canvas.paste(tile, ((cw - tile.width) // 2, (ch - tile.height) // 2))
        ImageDraw.Draw(canvas).text((4, 2), info["file_name"], fill=(255, 255, 255),
                                    font=_font(12), stroke_width=2, stroke_fill=(0, 0, 0))
        tiles.append(canvas)

    legend = [k for k in range(1, len(class_names)) if k in present] or list(range(1, len(class_names)))
    font = _font(14)
    per_row = max(1, (cols * cw) // 170)
    legend_h = 24 * (math.ceil((len(legend) + 1) / per_row)) + 8
    grid = Image.new("RGB", (cols * cw, rows * ch + legend_h), (255, 255, 255))
    for k, tile in enumerate(tiles):
        grid.paste(tile, ((k % cols) * cw, (k // cols) * ch))
    draw = ImageDraw.Draw(grid)
    entries = [(tuple(int(v) for v in colours[k]), class_names[k]) for k in legend]
    entries.append(((242, 242, 242), "ignore (crowd/overlap)"))
    for j, (rgb, label) in enumerate(entries):
        x = (j % per_row) * 170 + 6
        y = rows * ch + 6 + (j // per_row) * 24
        draw.rectangle([x, y, x + 16, y + 16], fill=rgb, outline=(0, 0, 0))
        draw.text((x + 22, y), label, fill=(0, 0, 0), font=font)
    out = pathlib.Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def _main(argv) -> int:
    ap = cli.ArgumentParser(prog="python -m model.data.coco_explore",
                            description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("counts", help="instances and images per category")
    p.add_argument("--annotations", required=True)
    p = sub.add_parser("images", help="images holding the given categories")
    p.add_argument("--annotations", required=True)
    p.add_argument("--categories", nargs="+", required=True, metavar="NAME")
    p.add_argument("--all", action="store_true", help="require every category (default: any)")
    p = sub.add_parser("grid", help="PNG grid of images with masks drawn over")
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True, help="image folder (e.g. val2017)")
    p.add_argument("--categories", nargs="+", metavar="NAME", help="default: all categories")
    p.add_argument("--all", action="store_true", help="require every category (default: any)")
    p.add_argument("--output", required=True, help="the grid PNG")
    p.add_argument("--n", type=int, default=16)
    args = ap.parse_args(argv)
    if args.command == "grid" and args.n < 1:
        raise cli.UserError("--n", f"must be >= 1, got {args.n}")

    try:
        coco = load_coco(args.annotations)
        if args.command == "counts":
            rows = category_counts(coco)
            print(f"{'category':<16} {'id':>3} {'instances':>9} {'crowd':>5} {'images':>6}")
            for r in rows:
                print(f"{r['name']:<16} {r['id']:>3} {r['instances']:>9} {r['crowd']:>5} {r['images']:>6}")
            print(f"{len(coco.dataset['images'])} images, {len(coco.dataset['annotations'])} "
                  f"annotations, {sum(r['instances'] > 0 or r['crowd'] > 0 for r in rows)} of "
                  f"{len(rows)} categories present")
        elif args.command == "images":
            infos = images_with(coco, args.categories, args.all)
            wanted = set(select_categories(coco, args.categories)[0])
            for info in infos:
                held = Counter(coco.cats[a["category_id"]]["name"]
                               for a in coco.imgToAnns[info["id"]] if a["category_id"] in wanted)
                print(info["file_name"], " ".join(f"{k}={v}" for k, v in sorted(held.items())))
            print(f"{len(infos)} images hold {'all' if args.all else 'any'} of: "
                  f"{', '.join(args.categories)}")
        else:
            out = render_grid(coco, args.images, args.categories, args.output, n=args.n,
                              require_all=args.all)
            print(f"wrote {out}")
    except (FileNotFoundError, ValueError) as exc:  # a missing file, an unknown category
        what, _, why = str(exc).partition(": ")  # our messages start with what they name
        raise cli.UserError(what, why or "invalid") from None
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
