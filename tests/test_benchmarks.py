"""python -m benchmarks at a tiny size: the report is complete and its files are written.

No timing assertions: only that every section ran and reported what it promises."""
from __future__ import annotations

import json

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
    "grpc": ["backend", "wire", "results"],
    "beam": ["results", "inprocess_reference", "cpu_ratio", "wall_ratio"],
    "training": ["train_step", "input_pipeline", "pipeline_vs_training"],
    "scaling": ["by_images", "by_image_size"],
    "export": ["total_bytes", "weights_bytes", "size_vs_weights", "without_warmup",
               "with_warmup", "first_request_speedup"],
    "bf16": ["float32", "bfloat16", "speedup", "pixel_agreement", "verdict"],
    "profile": ["stages_ms", "decomposition", "slowest_path", "beam_cprofile"],
}


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
    assert len(summary) == 4 and all(r["efficiency"] > 0 for r in summary)
    printed = capsys.readouterr().out
    assert "| in-process | serving_default batch 1 |" in printed
    md = (out / "bench.md").read_text()
    assert "## Floor" in md and "## gRPC" in md and "Skipped" in md
    assert (out / "throughput.png").stat().st_size > 0


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    code = _run(["--model-dir", str(tmp_path / "nothing"), "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing" in err and "make train export" in err
    assert not (tmp_path / "out").exists()


def test_every_section_at_tiny_size(tiny_model, tmp_path):
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
    assert [r["images"] for r in result["scaling"]["by_images"]["results"]] == [1, 2]
    assert 0.0 <= result["bf16"]["pixel_agreement"] <= 1.0
    assert result["export"]["with_warmup"]["warmup_records"] == 3
    paths = {r["path"] for r in result["summary"]}
    assert {"in-process", "Beam", "training", "in-process bfloat16"} <= paths
    assert any(p.startswith("gRPC") for p in paths)
    md = (out / "bench.md").read_text()
    for title in ("Floor", "In process", "gRPC", "Beam", "Training", "Scaling", "Export",
                  "bfloat16", "Where the time goes"):
        assert f"## {title}" in md
    assert "Failed" not in md
    for png in ("throughput.png", "latency.png", "scaling.png", "wire_bytes.png",
                "where_time_goes.png"):
        assert (out / png).stat().st_size > 0, png
