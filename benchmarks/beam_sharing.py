"""Memory and speed of the Beam job's worker processes, with and without one shared model.

    python -m benchmarks.beam_sharing --model-dir models/fcn8s --images 72 --workers 2

Runs `python -m beam_jobs.segment` as a child process on the local runner with
`--direct_num_workers N --direct_running_mode multi_processing`, once with a model per worker
process (Beam's default) and once with `--model-copies 1` (Beam's
`share_model_across_processes`: one model in a server process of the machine, the workers
send it their batches). Prints, for each: the peak memory of the whole process tree (PSS:
shared pages divided among the processes that map them, so TensorFlow's libraries mapped by
every process count once; RSS summed is printed too, for comparison), the number of
processes, and images/s (the pipeline's own wall time, from its summary.json, and the
command's, TensorFlow's import included). Speed targets belong here, not in tests.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

from common import cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB, from /proc/<pid>/smaps_rollup."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def run_once(argv: list[str], env: dict) -> dict:
    """Run the job command, sampling its process tree's memory every 0.2 s."""
    peak = {"pss_kb": 0, "rss_kb": 0, "processes": 0}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "beam_jobs.segment", *argv], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

    def sample():
        while proc.poll() is None:
            pids = _tree(proc.pid)
            mem = [_memory_kb(p) for p in pids]
            pss, rss = sum(m[0] for m in mem), sum(m[1] for m in mem)
            if pss > peak["pss_kb"]:
                peak.update(pss_kb=pss, rss_kb=rss, processes=len(pids))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"the job failed ({proc.returncode}):\n{err[-3000:]}")
    return {"command_wall_s": wall, **peak, "stdout": out.strip().splitlines()[-2:]}


def _main(argv=None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.beam_sharing",
                           description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--images", type=int, default=72, help="KITTI images, repeated to N")
    p.add_argument("--workers", type=int, default=2, help="--direct_num_workers")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    for flag in ("images", "workers", "batch_size"):
        if getattr(args, flag) < 1:
            raise cli.UserError(f"--{flag.replace('_', '-')}",
                                f"must be 1 or more, got {getattr(args, flag)}")

    # Here, not at the top: `--help` and bad flags answer without loading TensorFlow, which
    # this parent only needs to write the inputs its measured children read.
    from benchmarks.beam import write_inputs
    from benchmarks.common import load_images

    images = load_images(36)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-sharing-") as tmp:
        tmp = pathlib.Path(tmp)
        inputs = write_inputs(tmp, images, args.images)
        for label, extra in (("a model per worker process", []),
                             ("one shared model (--model-copies 1)", ["--model-copies", "1"])):
            out = tmp / f"out-{len(rows)}"
            job = ["--input", str(inputs), "--output", str(out), "--dataset", "folder",
                   "--model-dir", args.model_dir, "--no-evaluate",
                   "--batch-size", str(args.batch_size),
                   "--direct_num_workers", str(args.workers),
                   "--direct_running_mode", "multi_processing", *extra]
            print(f"running: {label} ...", file=sys.stderr, flush=True)
            r = run_once(job, env)
            summary = json.loads((out / "latest" / "summary.json").read_text())
            rows.append({"setup": label, "images": args.images, "workers": args.workers,
                         "peak_pss_mb": r["pss_kb"] / 1024, "peak_rss_sum_mb": r["rss_kb"] / 1024,
                         "processes_at_peak": r["processes"],
                         "pipeline_images_per_s": summary["images_per_s"],
                         "pipeline_wall_s": summary["wall_time_s"],
                         "command_wall_s": r["command_wall_s"], "ok": summary["ok"]})
    print("| setup | images | workers | peak PSS MB | peak RSS sum MB | processes | "
          "pipeline images/s | pipeline wall s | command wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r['images']} | {r['workers']} | {r['peak_pss_mb']:.0f} | "
              f"{r['peak_rss_sum_mb']:.0f} | {r['processes_at_peak']} | "
              f"{r['pipeline_images_per_s']:.2f} | {r['pipeline_wall_s']:.1f} | "
              f"{r['command_wall_s']:.1f} |")
    print(json.dumps(rows))
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
