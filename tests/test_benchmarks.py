"""python -m benchmarks at a tiny size: the report is complete and its files are written.

No timing assertions: only that every section ran and reported what it promises."""
from __future__ import annotations

import json
import types

import pytest

from tests.serving_fixtures import MODEL_NAME, export_version

# The smallest run that still goes through every code path.
TINY = ["--warmup", "1", "--repeats", "1", "--min-seconds", "0", "--images", "3",
        "--batch-sizes", "1", "2", "--clients", "1", "2", "--grpc-requests", "1",
        "--beam-images", "2", "--beam-batch", "2", "--scaling-images", "1",
        "--scaling-factors", "1", "2", "--scales", "0.5", "1", "--train-batch", "2",
        "--train-steps", "1", "--pipeline-batches", "2", "--matmul-size", "128",
        "--bf16-batch", "2", "--bf16-images", "2"]

SECTION_KEYS = {
    "floor": ["flops_per_image", "conv2d_flops", "graph_conv2d_flops", "graph_agrees",
              "matmul_float32", "matmul_bfloat16", "floor_ms_per_image", "machine",
              "peak_float32_flops_per_s", "peak_ms_per_image", "kernel_share_of_peak"],
    "inprocess": ["results"],
    "fc6": ["results"],
    "grpc": ["backend", "wire", "results"],
    "beam": ["results", "inprocess_reference", "cpu_ratio", "wall_ratio"],
    "training": ["train_step", "input_pipeline", "pipeline_vs_training"],
    "scaling": ["by_images", "by_image_size"],
    "export": ["total_bytes", "weights_bytes", "size_vs_weights", "without_warmup",
               "with_warmup", "first_request_speedup"],
    "bf16": ["float32", "bfloat16", "speedup", "pixel_agreement", "verdict"],
    "profile": ["stages_ms", "decomposition", "slowest_path", "beam_cprofile"],
}


def _conv(h, w, k, c_in, c_out):
    return 2 * h * w * k * k * c_in * c_out


def _hand_conv2d_flops(height=64, width=128, fc_width=16, classes=2):
    total, c_in = 0, 3
    for block, (c_out, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
        for _ in range(convs):  # VGG16, 3x3, at 1/2^block of the input
            total += _conv(height >> block, width >> block, 3, c_in, c_out)
            c_in = c_out
    h5, w5 = height // 32, width // 32
    total += _conv(h5, w5, 7, 512, fc_width) + _conv(h5, w5, 1, fc_width, fc_width)  # fc6, fc7
    return total + (_conv(h5, w5, 1, fc_width, classes)                     # score_fr
                    + _conv(2 * h5, 2 * w5, 1, 512, classes)                # score_pool4
                    + _conv(4 * h5, 4 * w5, 1, 256, classes))               # score_pool3


HAND_CONV2D_FLOPS = _hand_conv2d_flops()
# Transposed convolutions scatter a k x k kernel from each input pixel: upscore2 (4x4 from
# 1/32), upscore_pool4 (4x4 from 1/16), upscore8 (16x16 from 1/8), 2 -> 2 channels.
HAND_TRANSPOSED_FLOPS = _conv(2, 4, 4, 2, 2) + _conv(4, 8, 4, 2, 2) + _conv(8, 16, 16, 2, 2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench_models")
    return export_version(base, 1)


def _run(args):
    from benchmarks.__main__ import main
    return main(args)


def test_floor_and_inprocess_sections(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    code = _run(["--model-dir", str(tiny_model.parent), "--output", str(out),
                 "--sections", "floor", "inprocess", *TINY])
    assert code == 0
    result = json.loads((out / "bench.json").read_text())
    for key in SECTION_KEYS["floor"]:
        assert key in result["floor"], key
    # FLOPs of one 64x128 image through the tiny FCN-8s (fc_width 16, 2 classes), by hand:
    # 2*H*W*k*k*Cin*Cout per convolution ('same' padding, so pool n is 1/2^n of the input).
    assert result["floor"]["conv2d_flops"] == HAND_CONV2D_FLOPS
    assert result["floor"]["flops_per_image"] == HAND_CONV2D_FLOPS + HAND_TRANSPOSED_FLOPS
    # The layer count and the graph count of Conv2D FLOPs agree.
    assert result["floor"]["graph_agrees"]
    rows = result["inprocess"]["results"]
    assert {(r["signature"], r["batch"]) for r in rows} == {
        (s, b) for s in ("serving_default", "segment_encoded") for b in (1, 2)}
    for r in rows:
        assert r["images_per_s"] > 0 and r["p50_ms"] <= r["p99_ms"]
    assert result["grpc"] == {"skipped": "not in --sections"}
    assert result["meta"]["model"]["path"] == str(tiny_model)
    summary = result["summary"]
    assert len(summary) == 4
    floor_ms = result["floor"]["floor_ms_per_image"]
    for r in summary:  # efficiency is the floor's time over the path's time per image
        assert r["efficiency"] == pytest.approx(floor_ms * r["images_per_s"] / 1e3, rel=1e-12)
    # At one clock: the best row's first timing against the kernels measured at the start,
    # its timing at the end against those measured after it.
    fl, best = result["floor"], max(rows, key=lambda r: r["images_per_s"])
    again = result["inprocess"]["best_again"]
    assert (again["signature"], again["batch"]) == (best["signature"], best["batch"])

    def floor_ms(kernels):
        return fl["flops_per_image"] * 1e3 / max(kernels["matmul_float32"]["best_flops_per_s"],
                                                 kernels["conv_float32"]["best_flops_per_s"])
    same = result["same_clock_efficiency"]
    assert same["start"] == pytest.approx(floor_ms(fl["first_measurement"]) / best["ms_per_image"])
    assert same["end"] == pytest.approx(floor_ms(fl["second_measurement"]) / again["ms_per_image"])
    printed = capsys.readouterr().out
    assert "| in-process | serving_default batch 1 |" in printed
    assert f"reaches {same['start'] * 100:.1f} % of the floor" in printed
    md = (out / "bench.md").read_text()
    assert "## Floor" in md and "## gRPC" in md and "Skipped" in md
    assert (out / "throughput.png").stat().st_size > 0


def test_a_onednn_cap_below_bfloat16_skips_the_bfloat16_kernels(tiny_model, tmp_path,
                                                                 monkeypatch):
    # Sapphire Rapids under ONEDNN_MAX_CPU_ISA=AVX2: bfloat16 would abort inside oneDNN, so
    # neither the floor nor the bf16 section runs it, and the report names the cap.
    from benchmarks import bf16, floor, report
    from common import cpu
    from tests.test_cpu_peak import SAPPHIRE_RAPIDS

    capped = cpu.parse_cpuinfo(SAPPHIRE_RAPIDS, logical_cpus=4, isa_cap="AVX2")
    for module in (floor, bf16, report):
        monkeypatch.setattr(module, "this_machine", lambda: capped)
    out = tmp_path / "out"
    assert _run(["--model-dir", str(tiny_model.parent), "--output", str(out),
                 "--sections", "floor", "bf16", *TINY]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert "matmul_bfloat16" not in result["floor"] and "conv_float32" in result["floor"]
    assert result["floor"]["peak_float32_flops_per_s"] == pytest.approx(2 * 32 * 2.0e9)
    assert "AVX2" in result["bf16"]["skipped"]
    assert result["meta"]["machine"]["onednn_isa_cap"] == "AVX2"
    md = (out / "bench.md").read_text()
    assert "oneDNN capped at AVX2" in md and "bfloat16 kernels | not measured" in md


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    code = _run(["--model-dir", str(tmp_path / "nothing"), "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing" in err and "make train export" in err
    assert not (tmp_path / "out").exists()


def test_every_section_at_tiny_size(tiny_model, tmp_path, monkeypatch):
    from benchmarks import training

    # The training section runs the KITTI recipe's geometry; the tiny model's keeps it short.
    monkeypatch.setattr(training, "RECIPE_SIZE", (96, 160))
    monkeypatch.setattr(training, "RECIPE_CROP", (64, 128))
    monkeypatch.setattr(training, "RECIPE_FC_WIDTH", 16)
    out = tmp_path / "out"
    code = _run(["--model-dir", str(tiny_model), "--output", str(out), *TINY])
    result = json.loads((out / "bench.json").read_text())
    errors = {k: v["error"] for k, v in result.items() if isinstance(v, dict) and "error" in v}
    assert code == 0 and not errors, errors
    for section, keys in SECTION_KEYS.items():
        for key in keys:
            assert key in result[section], f"{section}.{key}"
    assert result["meta"]["model"]["name"] == MODEL_NAME
    assert {r["clients"] for r in result["grpc"]["results"]} == {1, 2}
    assert all(not r["errors"] for r in result["grpc"]["results"])
    assert {w["signature"] for w in result["grpc"]["wire"]} == {
        "serving_default", "segment_probabilities", "segment_encoded"}
    assert {r["mode"] for r in result["beam"]["results"]} == {"inprocess", "grpc"}
    again = result["inprocess"]["best_again"]  # the best configuration, timed at the end too
    first = max(result["inprocess"]["results"], key=lambda r: r["images_per_s"])
    assert (again["signature"], again["batch"]) == (first["signature"], first["batch"])
    assert again["vs_first"] == pytest.approx(again["images_per_s"] / first["images_per_s"])
    for r in result["beam"]["results"]:  # a quarter of the images (at least one), then all
        assert r["short_run"]["images"] == 1 and r["at_scale"]["from_images"] == [1, 2]
    assert [r["images"] for r in result["scaling"]["by_images"]["results"]] == [1, 2]
    assert 0.0 <= result["bf16"]["pixel_agreement"] <= 1.0
    assert result["export"]["with_warmup"]["warmup_records"] == 3
    # A training step: forward, input gradient and kernel gradient, each the forward FLOPs.
    step = result["training"]["train_step"]
    assert step["step_gflop"] * 1e9 == pytest.approx(
        3 * 2 * (HAND_CONV2D_FLOPS + HAND_TRANSPOSED_FLOPS))
    assert {"xla", "no_xla"} <= set(step)
    assert step["default"] in step and step["image_size"] == [64, 128]
    for name in ("xla", "no_xla", "bfloat16"):
        if name in step:  # each configuration against the floor of its own precision
            assert step[name]["floor_gflop_per_s"] == step[f"floor_{step[name]['dtype']}_gflop_per_s"]
    paths = {r["path"] for r in result["summary"]}
    assert {"in-process", "Beam", "training", "in-process bfloat16"} <= paths
    assert any(p.startswith("gRPC") for p in paths)
    md = (out / "bench.md").read_text()
    assert [r["batch"] for r in result["fc6"]["results"]] == [1, 2]
    assert all(r["max_probability_difference"] < 1e-4 for r in result["fc6"]["results"])
    for title in ("Floor", "In process", "fc6 as a matmul", "gRPC", "Beam", "Training",
                  "Scaling", "Export", "bfloat16", "Where the time goes"):
        assert f"## {title}" in md
    assert "Failed" not in md
    for png in ("throughput.png", "latency.png", "scaling.png", "wire_bytes.png",
                "where_time_goes.png"):
        assert (out / png).stat().st_size > 0, png


def test_a_line_through_two_job_lengths_splits_start_up_from_cost_per_image():
    from benchmarks.beam import fit_line

    # 54 images in 20 s, 216 in 60 s: 40 s for 162 more images, so 0.2469 s each, and
    # 20 - 54 * 40 / 162 = 6.667 s of start-up (by hand).
    fit = fit_line([54, 216], [20.0, 60.0])
    assert fit["per_image_s"] == pytest.approx(40 / 162)
    assert fit["fixed_s"] == pytest.approx(20 - 54 * 40 / 162)
    assert fit["marginal_images_per_s"] == pytest.approx(162 / 40)


def test_configurations_are_timed_in_turns(monkeypatch):
    # A fake clock: a call of "slow" takes 1 s, of "fast" 0.25 s. With 2 repeats and 1 s of
    # timing each, slow needs 2 calls and fast 4; they alternate while both still need calls.
    from benchmarks import common

    now, order = [0.0], []

    def call(name, seconds):
        def fn():
            order.append(name)
            now[0] += seconds
        return fn
    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    times = common.measure_in_turns({"slow": call("slow", 1.0), "fast": call("fast", 0.25)},
                                    warmup=1, repeats=2, min_seconds=1.0, max_repeats=10)
    assert order == ["slow", "fast", "slow", "fast", "slow", "fast", "fast", "fast"]
    assert times == {"slow": [1.0, 1.0], "fast": [0.25] * 4}
