"""Synthetic road scenes with exact masks, generated in code (numpy + Pillow).

Each scene: sky gradient with distant buildings/trees, a horizon, grass or dirt terrain, a
road drawn as a perspective band (random width, lateral offset and curvature) with lane
markings and kerbs/sidewalks, clutter that occludes the road (cars, boxes, poles: NOT road),
cast shadows, and global brightness/contrast/colour changes plus sensor noise. Labels are
exact: 1 road (markings included, as in KITTI), 0 everything else. Useful for smoke tests,
demos and CI, where no real dataset may be downloaded.
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from common import cli
from model.data.image_io import write_png

__all__ = ["render_scene", "generate", "save_sample_grid", "main"]

_GENERATOR_VERSION = 1  # bump when scenes change, so cached folders are regenerated


def _smooth_noise(rng, height, width, cell, amplitude):
    """Low-frequency noise: a coarse random grid upsampled bilinearly (texture, blotches)."""
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    grid = rng.normal(0.0, 1.0, (gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(img) * amplitude


def _colour(rng, base, jitter):
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-jitter, jitter, 3), 0, 255
                   ).astype(np.float32)


def _tint(rng, base, brightness, hue=8):
    """A colour near `base`: mostly brighter/darker, slightly tinted (no purple grass)."""
    # float32 throughout: float64 colours would silently double the cost of every image op.
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-brightness, brightness)
                   + rng.uniform(-hue, hue, 3), 0, 255).astype(np.float32)


def render_scene(rng: np.random.Generator, height: int = 160, width: int = 576):
    """One scene: (image uint8 [H,W,3], label uint8 [H,W] with 1 road, 0 not road)."""
    H, W = int(height), int(width)
    if H < 16 or W < 16:
        raise ValueError(f"scene too small: {H}x{W} (need at least 16x16)")
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]
    img = np.zeros((H, W, 3), np.float32)

    # Sky: vertical gradient, horizon a bit above the middle like a car-mounted camera.
    horizon = rng.uniform(0.32, 0.5) * H
    top, low = _tint(rng, (70, 120, 200), 30, 15), _tint(rng, (200, 215, 230), 25, 8)
    a = np.clip(ys / max(horizon, 1), 0, 1)[..., None]
    img[:] = top * (1 - a) + low * a
    img += _smooth_noise(rng, H, W, 24, 6)[..., None]

    # Terrain below the horizon: grass or dry dirt, textured.
    below = ys >= horizon
    grain = rng.standard_normal((H, W), dtype=np.float32)   # reused fine texture (speed)
    terrain = _tint(rng, (80, 120, 50) if rng.random() < 0.7 else (150, 130, 95), 20)
    tex = _smooth_noise(rng, H, W, 6, 14) + 6 * grain
    np.copyto(img, terrain + tex[..., None], where=below[..., None])  # in place: fast

    # Distant skyline (buildings/trees) sitting on the horizon: not road.
    x = 0.0
    while x < W:
        bw = rng.uniform(0.04, 0.15) * W
        bh = rng.uniform(0.05, 0.3) * horizon
        if rng.random() < 0.75:
            c = _colour(rng, (110, 110, 115) if rng.random() < 0.5 else (50, 85, 45), 30)
            y0 = int(max(0, horizon - bh))
            img[y0:int(np.ceil(horizon)) + 1, int(x):int(x + bw)] = c
        x += bw

    # Road: per row, depth t in (0,1] (0 at the horizon); width and offsets scale with t.
    t = np.clip((ys - horizon) / (H - horizon), 0, 1)
    vanish_x = W * rng.uniform(0.3, 0.7)
    bottom_w = W * rng.uniform(0.45, 1.1)
    offset = W * rng.uniform(-0.35, 0.35)        # where the road meets the bottom edge
    curve = W * rng.uniform(-0.3, 0.3)           # bends the far part of the road sideways
    centre = vanish_x + offset * t + curve * (1 - t) ** 3 * (t > 0)
    half = 0.5 * bottom_w * t
    dist = np.abs(xs - centre)
    road = (dist < half) & below & (t > 0.01)

    asphalt = _tint(rng, (95, 95, 98), 30, 6)
    np.copyto(img, asphalt + (_smooth_noise(rng, H, W, 10, 8) + 5 * grain)[..., None],
              where=road[..., None])

    # Kerb/sidewalk strips on one or both sides: look like road, are not road.
    side_w = rng.uniform(0.03, 0.12) * bottom_w * t
    for sign in (-1, 1):
        if rng.random() < 0.7:
            edge = centre + sign * half
            strip = below & (t > 0.01) & (np.abs(xs - (edge + sign * side_w / 2)) < side_w / 2)
            np.copyto(img, _tint(rng, (165, 160, 150), 20, 5) + 5 * grain[..., None],
                      where=strip[..., None])

    # Lane markings (road): solid edge lines and a dashed centre line, dashes in depth.
    line_w = np.maximum(0.012 * bottom_w * t, 0.6)
    paint = _colour(rng, (235, 235, 225), 15)
    marks = np.zeros((H, W), bool)
    if rng.random() < 0.8:
        inner = half - 0.04 * bottom_w * t
        marks |= road & (np.abs(dist - inner) < line_w / 2)
    if rng.random() < 0.8:
        depth = 1.0 / np.maximum(t, 1e-3)                 # ~ distance along the road
        dashes = ((depth * rng.uniform(0.6, 1.2) + rng.random()) % 1.0) < 0.45
        lane_x = centre + rng.choice([0.0, 0.15, -0.15]) * bottom_w * t
        marks |= road & dashes & (np.abs(xs - lane_x) < line_w / 2)
    np.copyto(img, paint, where=marks[..., None])

    label = road.astype(np.uint8)

    # Clutter drawn far-to-near so near objects occlude far ones; occluders are not road.
    pil_img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    pil_lab = Image.fromarray(label)
    shade = Image.new("L", (W, H), 0)
    d_img, d_lab, d_sh = ImageDraw.Draw(pil_img), ImageDraw.Draw(pil_lab), ImageDraw.Draw(shade)
    objs = []
    for _ in range(rng.integers(0, 7)):
        ty = rng.uniform(0.05, 1.0)
        objs.append((ty, rng.choice(["car", "car", "box", "pole"])))
    for ty, kind in sorted(objs):
        yb = horizon + ty * (H - horizon)                 # where the object touches the ground
        row = int(min(H - 1, yb))
        c_row, h_row = float(centre[row, 0]), float(half[row, 0])
        if kind == "pole":
            xb = c_row + rng.choice([-1, 1]) * (h_row + rng.uniform(0.0, 0.3) * W * ty)
            pw, ph = max(1.0, 0.012 * W * ty), rng.uniform(0.5, 1.2) * H * ty + 4
            box = [xb - pw / 2, yb - ph, xb + pw / 2, yb]
            d_img.rectangle(box, fill=tuple(int(v) for v in _colour(rng, (90, 90, 90), 40)))
            d_lab.rectangle(box, fill=0)
            continue
        xb = c_row + rng.uniform(-1.1, 1.1) * h_row
        if kind == "car":
            cw = rng.uniform(0.18, 0.28) * bottom_w * ty + 3
            ch = cw * rng.uniform(0.55, 0.8)
            body = [xb - cw / 2, yb - ch * 0.65, xb + cw / 2, yb]
            roof = [xb - cw * 0.35, yb - ch, xb + cw * 0.35, yb - ch * 0.6]
            colour = tuple(int(v) for v in rng.integers(20, 235, 3))
            d_sh.ellipse([xb - cw * 0.65, yb - ch * 0.12, xb + cw * 0.65, yb + ch * 0.12], fill=110)
            d_img.rectangle(roof, fill=colour)
            d_img.rectangle([roof[0] + cw * 0.05, roof[1] + ch * 0.06, roof[2] - cw * 0.05,
                             roof[3]], fill=(40, 50, 60))          # windows
            d_img.rectangle(body, fill=colour)
            for wx in (body[0] + cw * 0.18, body[2] - cw * 0.18):   # wheels
                r = cw * 0.1
                d_img.ellipse([wx - r, yb - r * 1.2, wx + r, yb + r * 0.6], fill=(20, 20, 20))
            d_lab.rectangle(roof, fill=0)
            d_lab.rectangle(body, fill=0)
            d_lab.rectangle([body[0], yb - cw * 0.12, body[2], yb + cw * 0.06], fill=0)
        else:
            s = rng.uniform(0.05, 0.12) * bottom_w * ty + 2
            box = [xb - s / 2, yb - s, xb + s / 2, yb]
            d_img.rectangle(box, fill=tuple(int(v) for v in _colour(rng, (150, 110, 60), 40)))
            d_lab.rectangle(box, fill=0)

    # Cast shadows of off-screen trees/buildings: darken, label unchanged.
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(0, W), rng.uniform(horizon, H)
        rx, ry = rng.uniform(0.05, 0.3) * W, rng.uniform(0.03, 0.15) * H
        d_sh.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.integers(60, 130)))

    img = np.asarray(pil_img, np.float32)
    label = np.asarray(pil_lab, np.uint8).copy()
    shadow = np.asarray(shade, np.float32) / 255.0
    shadow[: int(horizon)] = 0
    img *= (1.0 - 0.6 * shadow)[..., None]

    # Global photometric variation and sensor noise.
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.95, 1.05, 3)      # contrast, colour cast
    img *= gain.astype(np.float32)
    img += np.float32(128 * (1 - gain.mean()) + rng.uniform(-35, 35))  # around mid grey
    img += rng.uniform(1, 6) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), label


def generate(out_dir, n: int, height: int = 160, width: int = 576, seed: int = 0,
             progress: bool = True) -> list[tuple[str, str]]:
    """Write n scenes as out_dir/images/scene_NNNNN.png + out_dir/labels/scene_NNNNN.png.

    Scene i depends only on (seed, i, size), so the same call gives the same files and a
    larger n extends a smaller set. Existing files from the same settings are reused.
    """
    out = pathlib.Path(out_dir)
    meta = {"generator_version": _GENERATOR_VERSION, "height": int(height),
            "width": int(width), "seed": int(seed)}
    meta_path = out / "synthetic.json"
    reuse = meta_path.is_file() and json.loads(meta_path.read_text()) == meta
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    if not reuse:
        # Settings changed (or first run): drop old scenes so none is reused by mistake.
        meta_path.unlink(missing_ok=True)
        for old in [*(out / "images").glob("scene_*.png"), *(out / "labels").glob("scene_*.png")]:
            old.unlink()
    pairs = [(str(out / "images" / f"scene_{i:05d}.png"), str(out / "labels" / f"scene_{i:05d}.png"))
             for i in range(int(n))]
    todo = [i for i, (im, lb) in enumerate(pairs)
            if not (reuse and os.path.isfile(im) and os.path.isfile(lb))]
    for i in tqdm(todo, desc="synthetic scenes", unit="scene", disable=not progress or not todo):
        image, label = render_scene(np.random.default_rng([int(seed), i]), height, width)
        write_png(pairs[i][0], image, compress_level=1)  # noisy images: zlib effort wasted
        write_png(pairs[i][1], label)
    meta_path.write_text(json.dumps(meta))
    return pairs


def save_sample_grid(pairs, out_path, n: int = 8, alpha: float = 0.45):
    """PNG with image | road overlay (magenta) side by side for the first n pairs."""
    from model.data.image_io import read_image, read_label_png

    rows = []
    for image_path, label_path in pairs[:n]:
        image = read_image(image_path)
        road = read_label_png(label_path) == 1
        overlay = image.astype(np.float32)
        overlay[road] = (1 - alpha) * overlay[road] + alpha * np.array([255, 0, 255], np.float32)
        rows.append(np.concatenate([image, overlay.astype(np.uint8)], axis=1))
    write_png(out_path, np.concatenate(rows, axis=0))
    return pathlib.Path(out_path)


def _main(argv) -> int:
    import time

    ap = cli.ArgumentParser(prog="python -m model.data.synthetic",
                            description="Generate synthetic road scenes with exact masks.")
    ap.add_argument("--output", required=True, help="folder for images/ and labels/")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--height", type=int, default=160)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", help="also write a PNG of the first 8 scenes with their masks")
    args = ap.parse_args(argv)
    for flag, value in (("--n", args.n), ("--height", args.height), ("--width", args.width)):
        if value < 1:
            raise cli.UserError(flag, f"must be >= 1, got {value}")
    start = time.perf_counter()
    pairs = generate(args.output, args.n, args.height, args.width, args.seed)
    road = np.mean([np.mean(np.asarray(Image.open(lb)) == 1) for _, lb in pairs])
    print(f"{len(pairs)} scenes {args.height}x{args.width} in {args.output} "
          f"({time.perf_counter() - start:.1f} s); mean road fraction {road:.3f}")
    if args.grid:
        print(f"wrote {save_sample_grid(pairs, args.grid)}")
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
