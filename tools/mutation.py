"""Plant known bugs one at a time and check that the tests catch each one.

    python tools/mutation.py            (or: make mutation)
    python tools/mutation.py --only mirrored-ground-truth --timeout 600

Each bug is planted in a temporary copy of the working tree (tracked and untracked files
git does not ignore; never in the tree itself), then the tests that guard that code run
there (a fast subset, stopping after 5 failures, with a timeout). A bug the tests do not catch is a hole in the
suite. The table printed at the end is bug -> tests that failed; the exit status is 1 when a
bug got through (or when the unmutated copy already fails, which would make the table
meaningless).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str        # must occur exactly once in `file`
    new: str
    tests: tuple    # pytest arguments: files, -k expressions
    what: str


MUTATIONS = (
    Mutation("flipped-class-ids", "export/signatures.py",
             "tf.argmax(probabilities, axis=-1)", "tf.argmax(probabilities[..., ::-1], axis=-1)",
             ("tests/test_export.py",),
             "the exported graph answers class C-1-c for class c"),
    Mutation("mirrored-ground-truth", "beam_jobs/segment.py",
             '                label = evaluation.load_label(item.gt, self.classes["coco"])\n',
             '                label = evaluation.load_label(item.gt, self.classes["coco"])'
             '[:, ::-1]\n',
             ("tests/test_beam_segment.py", "-k", "kitti_layout or kitti_real_samples"),
             "the Beam job scores each image against its left-right mirrored labels"),
    Mutation("maxf-threshold-off-by-one", "model/metrics.py",
             "fn = np.concatenate(([0], np.cumsum(pos_hist)[:-1]))",
             "fn = np.cumsum(pos_hist)",
             ("tests/test_metrics.py",),
             "road at v > k instead of the devkit's v >= k (FN one threshold step early)"),
    Mutation("dropped-pool3-skip", "model/fcn8s.py",
             '            score_pool3 = _score(num_classes, POOL3_INIT_STDDEV, wd, '
             '"score_pool3")(pool3)\n'
             '            score = layers.Add(name="fuse_pool3")([score, score_pool3])\n',
             "",
             ("tests/test_model.py",),
             "FCN-8s without its pool3 skip (an FCN-16s)"),
    Mutation("scoreboard-merge-drops-confusion", "model/scoreboard.py",
             "            self.confusion += other.confusion\n", "",
             ("tests/test_scoreboard.py", "tests/test_beam_segment.py", "-k",
              "merge or scoreboard_fn"),
             "a merged Scoreboard (the Beam CombineFn's merge) keeps only its own confusion"),
    Mutation("dask-finish-bundle-dropped", "beam_jobs/runners/dask.py",
             "            invoker.invoke_finish_bundle()\n", "",
             ("tests/test_dask_runner.py", "-k", "batch or write_to_text"),
             "the corrected DaskRunner loses what DoFns emit in finish_bundle, as Beam's does"),
    Mutation("report-best-first", "model/image_scores.py",
             'return sorted(records, key=lambda r: (r.get("score") is None, r.get("score") or 0.0,',
             'return sorted(records, key=lambda r: (r.get("score") is None, -(r.get("score") or 0.0),',
             ("tests/test_report.py", "tests/test_image_scores.py"),
             "the report's gallery puts the best images first"),
    Mutation("fc6-patches-transposed", "export/precision.py",
             "tf.reshape(kernel, [kh * kw * cin, cout])",
             "tf.reshape(tf.transpose(kernel, [1, 0, 2, 3]), [kh * kw * cin, cout])",
             ("tests/test_export.py", "-k", "patch or fc6 or parity"),
             "the serving graph's fc6 matmul reads the 7x7 kernel column-major"),
    Mutation("crop-labels-from-elsewhere", "model/data/pipeline.py",
             "    return stacked[..., :3], tf.cast(stacked[..., 3:], tf.uint8)",
             "    return stacked[..., :3], tf.cast(tf.roll(stacked[..., 3:], 8, axis=1), tf.uint8)",
             ("tests/test_train.py", "-k", "crop"),
             "training windows carry labels cut 8 pixels to the left of their pixels"),
    Mutation("probe-results-out-of-order", "model/batch_size.py",
             "            results += part_results\n",
             "            results = part_results + results\n",
             ("tests/test_batch_size.py",),
             "the batch size probe hands back its calls' results in the wrong order"),
    Mutation("grpc-limit-split-drops-half", "beam_jobs/handlers.py",
             "                    return run_part(part[:half]) + run_part(part[half:])",
             "                    return run_part(part[:half]) + run_part(part[:half])",
             ("tests/test_beam_segment.py", "-k", "message_limit"),
             "a request refused as too large is split, and its first half answered twice"),
    Mutation("onednn-cap-ignored", "common/cpu.py",
             "                (level < 3 and flag.startswith(\"avx512\")) or\n",
             "",
             ("tests/test_cpu_peak.py", "tests/test_benchmarks.py", "-k", "cap"),
             "under ONEDNN_MAX_CPU_ISA=AVX2 the AVX-512 flags still count (peak twice too high)"),
    Mutation("bench-configurations-one-after-another", "benchmarks/common.py",
             "    while any(wants_more(name) for name in fns):\n        for name, fn in fns.items():\n"
             "            if wants_more(name):\n",
             "    for name, fn in fns.items():\n        while wants_more(name):\n"
             "            if True:\n",
             ("tests/test_benchmarks.py", "-k", "turns"),
             "the bench times each configuration to the end before the next (the clock drifts)"),
    Mutation("grpc-job-starts-unchecked", "beam_jobs/runners/__init__.py",
             "    return name in LOCAL\n", "    return False\n",
             ("tests/test_beam_segment.py", "-k", "before_it_starts"),
             "a local gRPC job starts without asking the server for the model"),
)


def working_tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         check=True, capture_output=True).stdout
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


def copy_tree(dest: pathlib.Path) -> None:
    for name in working_tree_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def plant(root: pathlib.Path, m: Mutation) -> None:
    path = root / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.file}: the code of mutation {m.name!r} is not found exactly once "
                         f"({text.count(m.old)} times); update tools/mutation.py")
    path.write_text(text.replace(m.old, m.new))


def run_tests(root: pathlib.Path, tests, timeout: float) -> tuple[str, list[str], float]:
    """('passed' | 'failed' | 'timeout' | 'error', failed test ids, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2",
           # The copy lives in a temporary folder: point it at the real samples.
           "FCNSEG_DATA": os.environ.get("FCNSEG_DATA", str(REPO.parent / "shared" / "data"))}
    cmd = [sys.executable, "-m", "pytest", "--maxfail=5", "-q", "-rf", "-p", "no:cacheprovider",
           *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", [], time.perf_counter() - start
    seconds = time.perf_counter() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    if proc.returncode == 0:
        return "passed", [], seconds
    if proc.returncode == 1 or failed:
        return "failed", failed, seconds
    return "error", [proc.stdout[-2000:] + proc.stderr[-2000:]], seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/mutation.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=[m.name for m in MUTATIONS])
    p.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the unmutated runs (they show the tests pass without the bug)")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]

    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="fcnseg-mutation-") as tmp:
        for m in chosen:
            root = pathlib.Path(tmp) / m.name
            copy_tree(root)
            if not args.no_baseline:
                print(f"[mutation] {m.name}: baseline {' '.join(m.tests)}", file=sys.stderr)
                status, failed, _ = run_tests(root, m.tests, args.timeout)
                if status != "passed":
                    print(f"[mutation] {m.name}: the unmutated copy does not pass ({status}): "
                          f"{failed}", file=sys.stderr)
                    ok = False
                    rows.append((m, "BASELINE " + status, failed, 0.0))
                    continue
            plant(root, m)
            print(f"[mutation] {m.name}: planted in {m.file}, running {' '.join(m.tests)}",
                  file=sys.stderr)
            status, failed, seconds = run_tests(root, m.tests, args.timeout)
            caught = status == "failed"
            ok &= caught
            rows.append((m, "caught" if caught else f"MISSED ({status})", failed, seconds))
            shutil.rmtree(root, ignore_errors=True)

    print("| bug | planted in | tests run | result | tests failed (first 3) | s |")
    print("|---|---|---|---|---|---|")
    for m, result, failed, seconds in rows:
        shown = "<br>".join(f"`{f}`" for f in failed[:3]) or "-"
        print(f"| {m.name}: {m.what} | `{m.file}` | `{' '.join(m.tests)}` | {result} | "
              f"{shown} | {seconds:.0f} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
