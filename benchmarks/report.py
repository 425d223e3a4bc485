"""The report: bench.json (everything), bench.md (tables), PNG plots, and the summary table
printed at the end of a run."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import time

import matplotlib
import tensorflow as tf
from matplotlib.figure import Figure

from benchmarks import inprocess
from benchmarks.breakdown import PATH_NAMES
from benchmarks.floor import float32_rate
from common.cpu import this_machine

SECTION_TITLES = {"floor": "Floor", "inprocess": "In process", "fc6": "fc6 as a matmul",
                  "grpc": "gRPC", "beam": "Beam", "training": "Training", "scaling": "Scaling",
                  "export": "Export", "bf16": "bfloat16", "profile": "Where the time goes"}


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary_rows(sections: dict) -> list[dict]:
    """One row per measured configuration, with efficiency against the floor and the ratio
    to the best in-process configuration (both taken from this same run)."""
    rows = []

    def add(path, config, r, **extra):
        if r and r.get("images_per_s"):
            rows.append({"path": path, "config": config, "images_per_s": r["images_per_s"],
                         "ms_per_image": r.get("ms_per_image"), "p50_ms": r.get("p50_ms"),
                         "p95_ms": r.get("p95_ms"), "p99_ms": r.get("p99_ms"), **extra})

    for r in sections.get("inprocess", {}).get("results", []):
        runtime = "" if r.get("backend", "tensorflow") == "tensorflow" else f"{r['backend']} "
        add("in-process", f"{runtime}{r['signature']} batch {r['batch']}", r)
    for r in sections.get("grpc", {}).get("results", []):
        add(f"gRPC ({sections['grpc']['backend']})",
            f"{r['signature']} {r['clients']} client(s), batch {r['batch']}", r)
    beam = sections.get("beam", {})
    for r in beam.get("results", []):
        runtime = f" ({r['runtime']})" if r.get("runtime") else ""
        add("Beam", f"{r['mode']} mode{runtime}, {r['images']} images, batch {r['batch']}", r)
        scale = r.get("at_scale") or {}
        if scale.get("images_per_s"):  # the marginal rate: what a long job costs per image
            first, last = scale["from_images"]
            add("Beam", f"{r['mode']} mode{runtime}, at scale (line through {first} and "
                f"{last} images; start-up {scale['fixed_s']:.1f} s)", scale)
    bf16 = sections.get("bf16", {})
    floor_section = sections.get("floor", {})
    if "bfloat16" in bf16:
        # Against the bfloat16 floor (the hardware's bfloat16 rate), when it was measured.
        factor = (floor_section["floor_bf16_ms_per_image"] / floor_section["floor_ms_per_image"]
                  if "floor_bf16_ms_per_image" in floor_section else 1)
        peak_factor = (floor_section["peak_bf16_ms_per_image"] /
                       floor_section["peak_ms_per_image"]
                       if floor_section.get("peak_bf16_ms_per_image") else None)
        add("in-process bfloat16", f"serving_default batch {bf16['batch']}", bf16["bfloat16"],
            floor_factor=factor, peak_factor=peak_factor)
    training = sections.get("training", {})
    if "train_step" in training:
        t = training["train_step"]
        # The step runs at the KITTI recipe's geometry, not necessarily the model's: the
        # factor turns the model's floor per image into the step's FLOPs per image.
        factor = (t["step_gflop"] * 1e9 / t["batch"] / floor_section["flops_per_image"]
                  if floor_section.get("flops_per_image") and "step_gflop" in t else 3)
        if t.get("dtype") == "bfloat16" and "floor_bf16_ms_per_image" in floor_section:
            # a bfloat16 step is held to the bfloat16 floor
            factor *= (floor_section["floor_bf16_ms_per_image"] /
                       floor_section["floor_ms_per_image"])
        add("training", f"Keras train step, batch {t['batch']}, "
            f"{t['image_size'][0]}x{t['image_size'][1]}, {t.get('default', '')}", t,
            floor_factor=factor, no_ratio=True)
        add("training", f"tf.data input pipeline, batch {training['input_pipeline']['batch']}",
            training["input_pipeline"], no_floor=True, no_ratio=True)

    floor = floor_section.get("floor_ms_per_image")
    peak = floor_section.get("peak_ms_per_image")
    inproc = [r for r in rows if r["path"] == "in-process"]
    best = max((r["images_per_s"] for r in inproc), default=None)
    for r in rows:
        ms = 1e3 / r["images_per_s"]
        factor, no_floor, no_ratio = (r.pop("floor_factor", 1), r.pop("no_floor", False),
                                      r.pop("no_ratio", False))
        peak_factor = r.pop("peak_factor", factor)
        # A training step is ~3x the forward FLOPs (forward, and two for the backward pass).
        r["efficiency"] = floor * factor / ms if floor and not no_floor else None
        r["share_of_peak"] = (peak * peak_factor / ms
                              if peak and peak_factor and not no_floor else None)
        r["vs_inprocess_best"] = r["images_per_s"] / best if best and not no_ratio else None
    return rows


def build(mut, images, args, sections: dict, started: float) -> dict:
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(),
                    "onednn_isa_cap": this_machine().isa_cap,
                    "platform": platform.platform(), "python": platform.python_version(),
                    "tensorflow": tf.__version__,
                    "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]},
        "model": {"path": str(mut.path), "name": mut.name, "image_size": list(mut.image_size),
                  "fc_width": mut.fc_width, "num_classes": mut.num_classes,
                  "compute_dtype": mut.metadata.get("compute_dtype"),
                  "full_size_random": bool(args.full_size)},
        "images": {"source": images.source, "count": len(images.arrays),
                   "size": list(images.arrays[0].shape[:2])},
        "options": {k: (str(v) if isinstance(v, pathlib.Path) else v)
                    for k, v in vars(args).items()},
    }
    floor = sections.get("floor", {}).get("floor_ms_per_image")
    profile = sections.get("profile", {})
    if floor and "paths_ms_per_image" in profile:
        # Against the final floor (measured again at the end of the run); the order of the
        # paths, and so the slowest one, does not change with it.
        profile["efficiency_by_path"] = {
            PATH_NAMES[k]: floor / v for k, v in profile["paths_ms_per_image"].items()
            if k in PATH_NAMES and v}
        peak = sections.get("floor", {}).get("peak_ms_per_image")
        if peak:
            profile["share_of_peak_by_path"] = {
                PATH_NAMES[k]: peak / v for k, v in profile["paths_ms_per_image"].items()
                if k in PATH_NAMES and v}
    return {"meta": meta, "summary": summary_rows(sections),
            "same_clock_efficiency": same_clock_efficiency(sections),
            **{name: sections.get(name, {"skipped": "not in --sections"})
               for name in SECTION_TITLES}}


def same_clock_efficiency(sections: dict) -> dict | None:
    """The best in-process configuration against the floor measured next to it: its first
    timing against the kernels at the start of the run, its timing at the end against the
    kernels measured right after. The clock of a VM can climb during a run; the efficiency
    column divides the better of the two floors by the first timing, two clocks apart."""
    floor_section, inproc = sections.get("floor", {}), sections.get("inprocess", {})
    again = inproc.get("best_again")
    if not again or "second_measurement" not in floor_section:
        return None

    def floor_ms(kernels):
        return floor_section["flops_per_image"] / float32_rate([kernels]) * 1e3
    return {"start": floor_ms(floor_section["first_measurement"])
            / inprocess.best(inproc)["ms_per_image"],
            "end": floor_ms(floor_section["second_measurement"]) / again["ms_per_image"]}


# --------------------------------------------------------------------------- Markdown

def _f(value, digits=1, scale=1.0, suffix="") -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, str):
        return value
    return f"{value * scale:,.{digits}f}{suffix}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(result: dict) -> str:
    rows = [[r["path"], r["config"], _f(r["images_per_s"], 2), _f(r["ms_per_image"], 0),
             _f(r["p50_ms"], 0), _f(r["p95_ms"], 0), _f(r["p99_ms"], 0),
             _f(r.get("efficiency"), 1, 100, " %"), _f(r.get("share_of_peak"), 1, 100, " %"),
             _f(r["vs_inprocess_best"], 2, 1, "x")]
            for r in result["summary"]]
    m = result["meta"]
    floor = result["floor"]
    cap = m["machine"].get("onednn_isa_cap")
    head = (f"{m['date']} on {m['machine']['cpu']} ({m['machine']['cores']} cores"
            + (f", oneDNN capped at {cap}" if cap else "") + "), TF "
            f"{m['machine']['tensorflow']}; model {m['model']['path']} at "
            f"{m['model']['image_size'][0]}x{m['model']['image_size'][1]}, fc_width "
            f"{m['model']['fc_width']}; images {m['images']['size'][1]}x"
            f"{m['images']['size'][0]}: {m['images']['source']}")
    if "floor_ms_per_image" in floor:
        head += (f"\n\nFloor: {floor['flops_per_image'] / 1e9:.2f} GFLOP per image at "
                 f"{floor['float32_flops_per_s'] / 1e9:.1f} GFLOP/s (best float32 "
                 f"matmul or conv) = {floor['floor_ms_per_image']:.0f} ms per image "
                 f"({floor['floor_images_per_s']:.2f} images/s at best).")
    if floor.get("peak_float32_flops_per_s"):
        c = floor["machine"]
        head += (f" Machine peak: {c['cores']} cores x {c['float32_flops_per_cycle']} FLOP/cycle"
                 f" x {c['clock_ghz']:.2f} GHz ({c['clock_source']}) = "
                 f"{floor['peak_float32_flops_per_s'] / 1e9:.0f} GFLOP/s float32 = "
                 f"{floor['peak_ms_per_image']:.0f} ms per image; the best kernel reaches "
                 f"{floor['kernel_share_of_peak'] * 100:.0f} % of it.")
    same = result.get("same_clock_efficiency")
    if same:
        head += (f"\n\nAt one clock, the best in-process configuration reaches "
                 f"{same['start'] * 100:.1f} % of the floor measured before it at the start "
                 f"and {same['end'] * 100:.1f} % of the one measured after it at the end (the "
                 f"efficiency column holds every row to the better of the two floors).")
    again = result.get("inprocess", {}).get("best_again")
    if again:
        runtime = "" if again["backend"] == "tensorflow" else f", {again['backend']}"
        head += (f"\n\nThe best in-process configuration ({again['signature']} batch "
                 f"{again['batch']}{runtime}), "
                 f"timed again at the end of the run: {again['images_per_s']:.2f} images/s, "
                 f"{again['vs_first']:.2f}x its first timing (the one every \"vs best "
                 f"in-process\" divides by): the machine moved that much in between.")
    beam = result.get("beam", {})
    if beam.get("cpu_ratio") is not None:
        head += (f"\n\nBeam job vs the bare model on {beam['images']} images: "
                 f"{beam['cpu_ratio']:.2f}x in CPU seconds, {beam['wall_ratio']:.2f}x in wall "
                 f"time (goal: {beam['cpu_ratio_goal']:.2f}x or better in CPU seconds).")
    return head + "\n\n" + _table(
        ["path", "configuration", "images/s", "ms/image", "p50 ms", "p95 ms", "p99 ms",
         "efficiency vs floor", "share of peak", "vs best in-process"], rows) + "\n"


def _section_md(name: str, s: dict) -> str:
    if "error" in s:
        return f"Failed: `{s['error']}`"
    if "skipped" in s:
        return f"Skipped ({s['skipped']})."
    return globals()[f"_md_{name}"](s)


def _md_floor(s):
    bf16 = "matmul_bfloat16" in s
    kernels = ("matmul_float32", "conv_float32") + (
        ("matmul_bfloat16", "conv_bfloat16") if bf16 else ())
    return "\n".join([
        _table(["quantity", "value"], [
            ["geometry (H x W)", f"{s['image_size'][0]} x {s['image_size'][1]}"],
            ["FLOPs per image (conv + transposed conv)", _f(s["flops_per_image"] / 1e9, 3,
                                                            suffix=" G")],
            ["Conv2D FLOPs from the layers / from the graph (tf profiler)",
             f"{s['conv2d_flops'] / 1e9:.3f} G / {_f((s['graph_conv2d_flops'] or 0) / 1e9, 3)}"
             f" G ({_f(s.get('graph_difference'), 2, 100, ' %')}: "
             f"{'agree' if s['graph_agrees'] else 'DISAGREE'})"],
            ["Conv2DTranspose FLOPs (not counted by the profiler)",
             _f(s["conv2d_transpose_flops"] / 1e9, 3, suffix=" G")],
            [f"float32 matmul {s['matmul_float32']['n']}^2 (best / median)",
             _f(s["matmul_float32"]["best_flops_per_s"] / 1e9, 1) + " / " +
             _f(s["matmul_float32"]["flops_per_s"] / 1e9, 1, suffix=" GFLOP/s")],
            *([[f"bfloat16 matmul {s['matmul_bfloat16']['n']}^2 (best / median)",
                _f(s["matmul_bfloat16"]["best_flops_per_s"] / 1e9, 1) + " / " +
                _f(s["matmul_bfloat16"]["flops_per_s"] / 1e9, 1, suffix=" GFLOP/s") +
                f" ({s['bf16_matmul_speedup']:.2f}x float32)"]] if bf16 else
              [["bfloat16 kernels", "not measured (oneDNN capped below the CPU's bfloat16 "
                                    "unit)"]]),
            *[[f"{c['dtype']} {c['shape']} (best / median)",
               _f(c["best_flops_per_s"] / 1e9, 1) + " / " +
               _f(c["flops_per_s"] / 1e9, 1, suffix=" GFLOP/s")]
              for c in (s["conv_float32"], s.get("conv_bfloat16")) if c],
            ["rate used for the floor: float32" + (" / bfloat16" if bf16 else "")
             + " (fastest kernel, best repetition"
             + (", best of the measurements at the start and the end of the run)"
                if "second_measurement" in s else ")"),
             _f(s["float32_flops_per_s"] / 1e9, 1)
             + (" / " + _f(s["bfloat16_flops_per_s"] / 1e9, 1) if bf16 else "") + " GFLOP/s"
             + (f" ({s['bf16_speedup']:.2f}x)" if bf16 else "")],
            *([["kernels measured again at the end of the run (best): float32 matmul / conv"
                + (", bfloat16 matmul / conv" if bf16 else ""),
                " / ".join(_f(s["second_measurement"][k]["best_flops_per_s"] / 1e9, 1)
                           for k in kernels) + " GFLOP/s"]]
              if "second_measurement" in s else []),
            ["floor: best time per image (float32)", _f(s["floor_ms_per_image"], 1,
                                                        suffix=" ms")],
            *([["floor: best time per image (bfloat16)",
                _f(s["floor_bf16_ms_per_image"], 1, suffix=" ms")]] if bf16 else []),
            *_peak_rows(s),
        ])])


def _peak_rows(s):
    c = s.get("machine")
    if not c:
        return []
    if not s.get("peak_float32_flops_per_s"):
        return [["machine peak", "unknown (no CPU flags or clock on this platform)"]]
    return [
        ["CPU (flags read from /proc/cpuinfo)",
         f"{c['model_name']}: {c['cores']} cores ({c['logical_cpus']} CPUs, "
         f"{c['threads_per_core']} thread(s) per core), {c['clock_ghz']:.2f} GHz "
         f"({c['clock_source']}), bfloat16 unit: {c['bfloat16_unit'] or 'none'}"
         + (f"; oneDNN capped at {c['isa_cap']}, so the flags above it do not count"
            if c.get("isa_cap") else "")],
        ["machine peak float32: cores x FLOP/cycle x clock",
         f"{c['cores']} x {c['float32_flops_per_cycle']} x {c['clock_ghz']:.2f} GHz = "
         f"{s['peak_float32_flops_per_s'] / 1e9:.0f} GFLOP/s "
         f"({s['peak_ms_per_image']:.1f} ms per image)"],
        ["machine peak bfloat16",
         (f"{c['cores']} x {c['bfloat16_flops_per_cycle']} x {c['clock_ghz']:.2f} GHz = "
          f"{s['peak_bfloat16_flops_per_s'] / 1e9:.0f} GFLOP/s "
          f"({s['peak_bf16_ms_per_image']:.1f} ms per image)")
         if s.get("peak_bfloat16_flops_per_s") else "no bfloat16 hardware: none"],
        ["best measured kernel's share of the peak: float32 / bfloat16",
         _f(s["kernel_share_of_peak"], 0, 100, " %") + " / " +
         _f(s.get("bf16_kernel_share_of_peak"), 0, 100, " %")],
    ]


def _md_inprocess(s):
    return _table(["backend", "signature", "batch", "images/s", "ms/image", "p50 ms", "p95 ms",
                   "p99 ms", "calls"],
                  [[r.get("backend", "tensorflow"), r["signature"], r["batch"], _f(r["images_per_s"], 2),
                    _f(r["ms_per_image"], 0), _f(r["p50_ms"], 0), _f(r["p95_ms"], 0),
                    _f(r["p99_ms"], 0), r["n"]] for r in s["results"]])


def _md_fc6(s):
    rows = [[r["batch"], _f(r["convolution"]["ms_per_image"], 0),
             _f(r["matmul"]["ms_per_image"], 0), _f(r["speedup"], 2, suffix="x"),
             f"{r['max_probability_difference']:.1e}"]
            for r in s["results"]]
    return (f"The network alone at {s['image_size'][0]}x{s['image_size'][1]} (fc width "
            f"{s['fc_width']}), fc6 as TensorFlow's convolution and as the export's matmul of "
            f"7x7 patches, called alternately:\n\n" +
            _table(["batch", "convolution ms/image", "matmul ms/image", "speedup",
                    "max probability difference"], rows))


def _md_grpc(s):
    timed = _table(["signature", "output filter", "clients", "images/s", "p50 ms", "p95 ms",
                    "p99 ms", "requests", "errors"],
                   [[r["signature"], ", ".join(r["output_filter"]) if isinstance(
                       r["output_filter"], list) else r["output_filter"], r["clients"],
                     _f(r["images_per_s"], 2), _f(r.get("p50_ms"), 0), _f(r.get("p95_ms"), 0),
                     _f(r.get("p99_ms"), 0), r["requests"], len(r["errors"])]
                    for r in s["results"]])
    wire = _table(["signature", "output filter", "request bytes/image",
                   "response bytes/image"],
                  [[w["signature"], ", ".join(w["output_filter"]) if isinstance(
                      w["output_filter"], list) else w["output_filter"],
                    f"{w['request_bytes']:,}", f"{w['response_bytes']:,}"] for w in s["wire"]])
    return (f"Backend: {s['backend_description']}. Latency is per request.\n\n{timed}\n\n"
            f"Serialized PredictRequest / PredictResponse sizes for one "
            f"{s['image_size'][1]}x{s['image_size'][0]} image (its PNG file: "
            f"{s['wire'][0]['image_png_bytes']:,} bytes):\n\n{wire}")


def _md_beam(s):
    ref = s["inprocess_reference"]
    rows = []
    for r in s["results"]:
        short, scale = r.get("short_run"), r.get("at_scale") or {}
        if short:
            rows.append([r["mode"], short["images"], r["batch"], _f(short["wall_s"], 1),
                         _f(short.get("cpu_s"), 1), _f(short["images_per_s"], 2), "", "", ""])
        rows.append([r["mode"], r["images"], r["batch"], _f(r["wall_s"], 1),
                     _f(r.get("cpu_s"), 1), _f(r["images_per_s"], 2), _f(r["ms_per_image"], 0),
                     _f(r["vs_inprocess"], 2, suffix="x"),
                     _f(r.get("cpu_vs_inprocess"), 2, suffix="x")])
        if scale.get("images_per_s"):
            rows.append([f"{r['mode']}, at scale", "per image", r["batch"],
                         f"start-up {_f(scale['fixed_s'], 1)}",
                         _f(scale["cpu_ms_per_image"] / 1e3, 3),
                         _f(scale["images_per_s"], 2), _f(scale["ms_per_image"], 0),
                         _f(scale.get("vs_inprocess"), 2, suffix="x"),
                         _f(scale.get("cpu_vs_inprocess"), 2, suffix="x")])
    rows.append([ref["mode"], ref["images"], ref["batch"], _f(ref["wall_s"], 1),
                 _f(ref.get("cpu_s"), 1), _f(ref["images_per_s"], 2), _f(ref["ms_per_image"], 0),
                 "1.00x", "1.00x"])
    return (f"End to end: pipeline start-up, model load and first-call warm-up (in-process "
            f"mode), reading, validating and writing files included; the gRPC server was "
            f"warmed up by one request. Each mode runs over a quarter of the images and over "
            f"all of them; the line through both splits its time into a start-up cost and a "
            f"cost per image (\"at scale\": what a long job pays per image). gRPC backend: "
            f"{s['backend']}.\n\n" +
            _table(["mode", "images", "batch", "wall s", "CPU s", "images/s", "ms/image",
                    "vs in-process (wall)", "vs in-process (CPU s)"], rows) +
            ("" if s.get("cpu_ratio") is None else
             f"\n\nIn-process job / bare model: {s['cpu_ratio']:.2f}x in CPU seconds (goal "
             f"{s['cpu_ratio_goal']:.2f}x: {'met' if s['meets_cpu_ratio_goal'] else 'NOT met'})"
             f", {s['wall_ratio']:.2f}x in wall time. The gRPC row's CPU seconds are the "
             f"client side only when the server runs in another process."))


def _md_training(s):
    t, d = s["train_step"], s["input_pipeline"]
    steps = []
    for name, label in (("xla", "float32, XLA on"), ("no_xla", "float32, XLA off"),
                        ("bfloat16", "mixed bfloat16")):
        r = t.get(name)
        if not r:
            continue
        default = " (model.train's default here)" if name == t.get("default") else ""
        steps.append([f"Keras train step, {label}{default}",
                      _f(r["images_per_s"], 2),
                      f"{r['gflop_per_s']:.1f} GFLOP/s = {r['share_of_floor'] * 100:.0f} % of "
                      f"the {r['dtype']} floor ({r['floor_gflop_per_s']:.1f} GFLOP/s, same "
                      f"section);"
                      f" {t['step_gflop']:.0f} GFLOP a step, batch {t['batch']} at "
                      f"{t['image_size'][0]}x{t['image_size'][1]}, fc width {t['fc_width']}, "
                      f"random data, median of {r['steps']} steps"])
    return _table(["what", "images/s", "notes"], steps + [
        ["tf.data pipeline (make_dataset, training=True)", _f(d["images_per_s"], 1),
         f"{d['source']}; cache warm; first pass (decode) {d['first_pass_images_per_s']:.1f} "
         f"images/s"],
        ["pipeline / training", _f(s["pipeline_vs_training"], 1, suffix="x"),
         "must be well above 1 so the input never starves training"]])


def _md_scaling(s):
    parts = []
    b = s["by_images"]
    if b["results"]:
        parts.append(_table(["images", "wall s", "images/s"],
                            [[r["images"], _f(r["wall_s"], 1), _f(r["images_per_s"], 2)]
                             for r in b["results"]]))
        if b.get("fit"):
            f = b["fit"]
            parts.append(f"Line fit: {f['fixed_s']:.1f} s fixed per run (pipeline start-up, "
                         f"model load, warm-up) + {f['per_image_s'] * 1e3:.0f} ms per "
                         f"image (marginal {_f(f['marginal_images_per_s'], 2)} images/s per "
                         f"worker like this machine).")
            if f["per_image_s"] > 0:
                hours = (f["fixed_s"] + 10_000 * f["per_image_s"]) / 3600
                parts.append(f"Sizing example: 10,000 images take about {hours:.1f} h on one "
                             f"such worker, about {hours * 60 / 10:.0f} min on 10 (each "
                             f"worker also loads the model once: see Export).")
    r = s["by_image_size"]["results"]
    parts.append(_table(["scale", "network input", "ms/image", "GFLOP/image", "GFLOP/s"],
                        [[x["scale"], f"{x['image_size'][0]}x{x['image_size'][1]}",
                          _f(x["ms_per_image"], 0), _f(x.get("flops_per_image", 0) / 1e9, 2),
                          _f((x.get("achieved_flops_per_s") or 0) / 1e9, 1)] for x in r]))
    return "\n\n".join(parts)


def _md_export(s):
    c, w = s["without_warmup"], s["with_warmup"]
    mb = lambda n: f"{n / 1e6:,.1f} MB"  # noqa: E731
    return (_table(["quantity", "value"], [
        ["SavedModel total", mb(s["total_bytes"])],
        ["variables/", mb(s["variables_bytes"])],
        ["saved_model.pb", mb(s["saved_model_pb_bytes"])],
        ["warm-up records", mb(s["warmup_bytes"])],
        ["weights (float32)", mb(s["weights_bytes"])],
        ["SavedModel / weights", _f(s["size_vs_weights"], 2, suffix="x")],
        ["load time (tf.saved_model.load, fresh process)", _f(c["load_s"], 2, suffix=" s")],
        ["warm-up replay (3 records)", _f(w.get("warmup_replay_s"), 2, suffix=" s")],
    ]) + "\n\n" + _table(
        ["first request (fresh process)", "without warm-up ms", "with warm-up ms",
         "second request ms", "speed-up"],
        [[k, _f(c[f"{k}_first_ms"], 0), _f(w[f"{k}_first_ms"], 0), _f(c[f"{k}_second_ms"], 0),
          _f(s["first_request_speedup"][k], 2, suffix="x")]
         for k in ("serving_default", "segment_encoded")]) +
        f"\n\nWarm-up replayed by the {s['warmup_replayed_by']}.")


def _md_bf16(s):
    return _table(["compute dtype", "images/s", "p50 ms", "notes"], [
        ["float32", _f(s["float32"]["images_per_s"], 2), _f(s["float32"]["p50_ms"], 0),
         f"serving_default batch {s['batch']}"],
        ["bfloat16", _f(s["bfloat16"]["images_per_s"], 2), _f(s["bfloat16"]["p50_ms"], 0),
         f"speed-up {s['speedup']:.2f}x (target {s['target_speedup']}x: "
         f"{'met' if s['meets_speed_target'] else 'NOT met'})"],
        ["pixels whose class agrees", _f(s["pixel_agreement"], 3, 100, " %"), "",
         f"{s['images_compared']} images (target {s['target_agreement'] * 100:.1f} %: "
         f"{'met' if s['meets_agreement_target'] else 'NOT met'})"]]) + (
        f"\n\nbfloat16 hardware: {s.get('bfloat16_unit') or 'none'}. {s['verdict']}."
        if s.get("verdict") else "")


def _md_profile(s):
    parts = [f"Slowest path relative to the floor: **{s['slowest_path'] or 'unknown'}** "
             f"(efficiency: " + ", ".join(f"{k} {v * 100:.1f} %" for k, v in
                                          s.get("efficiency_by_path", {}).items()) + ").",
             "Stages of one KITTI image (batch of one), each timed on its own, in rounds "
             "interleaved with the whole calls they make up (ms; the parts below use the "
             "fastest round, since other load only ever adds time):",
             _table(["stage", "fastest ms", "median ms"],
                    [[k, _f(v, 1), _f(s["stages_median_ms"].get(k), 1)]
                     for k, v in s["stages_ms"].items()])]
    for path, d in s["decomposition"].items():
        parts.append(f"**{path}**: {d['total_ms']:.0f} ms per image")
        parts.append(_table(["part", "ms", "share"],
                            [[k, _f(v, 1) if v >= 0 else f"{v:.1f} (noise: ~0)",
                              _f(d["shares"].get(k), 0, 100, " %")]
                             for k, v in d["parts_ms"].items()]))
    prof = s.get("beam_cprofile")
    if prof:
        parts.append(f"cProfile of the Beam job ({prof.get('mode', 'inprocess')} mode, "
                     f"{prof['images']} images, {prof['wall_s']:.1f} s wall; own time by "
                     f"package, calling thread only):")
        parts.append(_table(["package", "own s", "share"],
                            [[k, _f(v, 2), _f(v / prof["profiled_s"], 0, 100, " %")]
                             for k, v in list(prof["by_package"].items())[:10]]))
        parts.append(_table(["function", "calls", "own s", "cumulative s"],
                            [[f"`{f['function']}`", f["calls"], _f(f["own_s"], 2),
                              _f(f["cumulative_s"], 2)] for f in prof["top_functions"][:10]]))
    return "\n\n".join(parts)


def markdown(result: dict) -> str:
    parts = ["# fcnseg benchmark", summary_markdown(result)]
    for name, title in SECTION_TITLES.items():
        s = result[name]
        seconds = (f" ({s['section_seconds']} s, load average {s['load_average'][0]} -> "
                   f"{s['load_average'][1]})" if "section_seconds" in s else "")
        parts.append(f"## {title}{seconds}\n\n{_section_md(name, s)}")
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------- plots

def plots(result: dict, out: pathlib.Path) -> list[pathlib.Path]:
    matplotlib.use("Agg")

    written = []
    rows = result["summary"]
    if rows:
        fig = Figure(figsize=(9, 0.35 * len(rows) + 1.5))
        ax = fig.subplots()
        labels = [f"{r['path']}: {r['config']}" for r in rows]
        ax.barh(range(len(rows)), [r["images_per_s"] for r in rows], color="tab:blue")
        floor = result["floor"].get("floor_images_per_s")
        if floor:
            ax.axvline(floor, color="tab:red", linestyle="--", label="floor (float32)")
            ax.legend(loc="lower right")
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("images/s (log)")
        ax.set_title("Throughput by path")
        fig.tight_layout()
        written.append(_save(fig, out / "throughput.png"))

        lat = [r for r in rows if r.get("p50_ms")]
        fig = Figure(figsize=(9, 0.35 * len(lat) + 1.5))
        ax = fig.subplots()
        for i, (key, colour) in enumerate((("p50_ms", "tab:green"), ("p95_ms", "tab:orange"),
                                           ("p99_ms", "tab:red"))):
            ax.barh([j + i * 0.27 for j in range(len(lat))], [r[key] for r in lat], 0.27,
                    color=colour, label=key[:3])
        ax.set_yticks([j + 0.27 for j in range(len(lat))],
                      [f"{r['path']}: {r['config']}" for r in lat], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("latency per call/request, ms (log)")
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, out / "latency.png"))

    scaling = result["scaling"]
    if "by_images" in scaling:
        fig = Figure(figsize=(10, 4))
        a, b = fig.subplots(1, 2)
        rs = scaling["by_images"]["results"]
        a.plot([r["images"] for r in rs], [r["wall_s"] for r in rs], "o-", label="measured")
        fit = scaling["by_images"].get("fit")
        if fit:
            xs = [0, max(r["images"] for r in rs)]
            a.plot(xs, [fit["fixed_s"] + fit["per_image_s"] * x for x in xs], "--",
                   label=f"{fit['fixed_s']:.1f} s + {fit['per_image_s'] * 1e3:.0f} ms/image")
        a.set_xlabel("images")
        a.set_ylabel("Beam job wall time, s")
        a.set_title("Beam (in-process) vs number of images")
        a.legend()
        rs = scaling["by_image_size"]["results"]
        b.plot([r["pixels"] / 1e3 for r in rs], [r["ms_per_image"] for r in rs], "o-")
        for r in rs:
            b.annotate(f"{r['image_size'][0]}x{r['image_size'][1]}",
                       (r["pixels"] / 1e3, r["ms_per_image"]), fontsize=8)
        b.set_xlabel("network input, kilopixels")
        b.set_ylabel("ms per image")
        b.set_title("Network vs image size")
        fig.tight_layout()
        written.append(_save(fig, out / "scaling.png"))

    grpc = result["grpc"]
    if "wire" in grpc:
        fig = Figure(figsize=(9, 4))
        ax = fig.subplots()
        w = grpc["wire"]
        names = [f"{x['signature']}\n{','.join(x['output_filter']) if isinstance(x['output_filter'], list) else 'all'}"  # noqa: E501
                 for x in w]
        ax.bar([i - 0.2 for i in range(len(w))], [x["request_bytes"] / 1e3 for x in w], 0.4,
               label="request")
        ax.bar([i + 0.2 for i in range(len(w))], [x["response_bytes"] / 1e3 for x in w], 0.4,
               label="response")
        ax.set_xticks(range(len(w)), names, fontsize=6)
        ax.set_yscale("log")
        ax.set_ylabel("kB per image (log)")
        ax.set_title("gRPC bytes on the wire")
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, out / "wire_bytes.png"))

    profile = result["profile"]
    if profile.get("decomposition"):
        paths = list(profile["decomposition"])
        parts = list(dict.fromkeys(p for d in profile["decomposition"].values()
                                   for p in d["parts_ms"]))
        fig = Figure(figsize=(10, 3 + 0.25 * len(parts)))
        ax = fig.subplots()
        for i, path in enumerate(paths):
            left = 0.0
            for part, ms in profile["decomposition"][path]["parts_ms"].items():
                ms = max(ms, 0.0)  # a negative remainder is measurement noise
                ax.barh(i, ms, left=left, color=f"C{parts.index(part) % 10}",
                        hatch="//" if parts.index(part) >= 10 else None,
                        label=part if i == [j for j, p in enumerate(paths) if part in
                                            profile["decomposition"][p]["parts_ms"]][0]
                        else None)
                left += ms
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
        ax.set_yticks(range(len(paths)), paths, fontsize=8)
        ax.set_xlabel("ms per image")
        ax.set_title("Where the time goes")
        fig.tight_layout()
        written.append(_save(fig, out / "where_time_goes.png"))
    return written


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.savefig(path, dpi=110)
    return path


def write(result: dict, out) -> list[pathlib.Path]:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(markdown(result))
    return [out / "bench.json", out / "bench.md", *plots(result, out)]
