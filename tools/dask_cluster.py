"""A local Dask distributed cluster in one command, for `--runner DaskRunner`.

    python tools/dask_cluster.py start [--workers 2] [--threads 1] [--memory-limit 6GiB]
    python tools/dask_cluster.py stop
    (or: make dask-cluster DASK_WORKERS=2)

`start` runs a scheduler and N workers (each under a nanny, which restarts a worker that dies
and enforces its memory limit) as background processes bound to 127.0.0.1 only, waits until
every worker has joined, prints one JSON line (scheduler address, dashboard port, process
ids, state file) and returns. `stop` ends exactly the processes the state file names, by
process id. Logs go beside the state file (default runs/dask-cluster/). Workers import this
repository (PYTHONPATH is set to it), as the job's DoFns need.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DEFAULT_STATE = REPO / "runs" / "dask-cluster" / "cluster.json"  # runs/ is git-ignored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:  # a child of this process (start() ran here) is gone once reaped
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def start(workers: int = 2, threads: int = 1, memory_limit: str = "6GiB",
          port: Optional[int] = None, dashboard_port: Optional[int] = None,
          state: pathlib.Path = DEFAULT_STATE, timeout: float = 120.0) -> dict:
    """Start the cluster; returns what `start` prints (also written to `state`)."""
    if state.exists():
        raise RuntimeError(f"{state} exists: a cluster may be running (stop it first)")
    state.parent.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    dashboard_port = dashboard_port or _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    info = {"address": f"tcp://{HOST}:{port}", "dashboard_port": dashboard_port,
            "scheduler_pid": None, "nanny_pids": [], "worker_pids": [], "state": str(state)}

    def spawn(name: str, args: list) -> int:
        log = (state.parent / f"{name}.log").open("wb")
        # A session of its own: a Ctrl-C in the shell that ran `start` leaves it running.
        proc = subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        return proc.pid

    try:
        info["scheduler_pid"] = spawn("scheduler", [
            "distributed.cli.dask_scheduler", "--host", HOST, "--port", str(port),
            "--dashboard-address", f"{HOST}:{dashboard_port}"])
        _write(state, info)
        deadline = time.time() + timeout
        while not _port_open(port):
            if time.time() > deadline or not _alive(info["scheduler_pid"]):
                raise RuntimeError(f"the scheduler did not start; see {state.parent}/scheduler.log")
            time.sleep(0.2)
        for i in range(workers):
            info["nanny_pids"].append(spawn(f"worker-{i}", [
                "distributed.cli.dask_worker", info["address"], "--host", HOST,
                "--nthreads", str(threads), "--nworkers", "1", "--memory-limit", memory_limit,
                "--dashboard-address", f"{HOST}:0", "--name", f"worker-{i}"]))
            _write(state, info)
        from distributed import Client

        with Client(info["address"], timeout=timeout) as client:
            client.wait_for_workers(workers, timeout=timeout)
            info["worker_pids"] = sorted(client.run(os.getpid).values())
        _write(state, info)
    except BaseException:
        stop(state)
        raise
    return info


def _write(state: pathlib.Path, info: dict) -> None:
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(state)


def stop(state: pathlib.Path = DEFAULT_STATE, grace: float = 20.0) -> list:
    """End the processes the state file names (nannies, then the scheduler); returns them."""
    if not state.exists():
        return []
    info = json.loads(state.read_text())
    # Nannies stop their workers on SIGTERM; the worker pids are a fallback for a nanny
    # that is already gone.
    order = [*info["nanny_pids"], *info["worker_pids"], info["scheduler_pid"]]
    pids = [p for p in order if p]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in pids:
        _alive(pid)  # reaps a child killed above
    state.unlink()
    return pids


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/dask_cluster.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start a scheduler and N workers on 127.0.0.1")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--threads", type=int, default=1, help="threads per worker")
    s.add_argument("--memory-limit", default="6GiB",
                   help="per worker (default 6GiB: two workers fit a 24 GiB machine with room "
                        "for the launcher)")
    s.add_argument("--port", type=int, help="scheduler port (default: a free one)")
    s.add_argument("--dashboard-port", type=int, help="default: a free one")
    s.add_argument("--state", type=pathlib.Path, default=DEFAULT_STATE)
    t = sub.add_parser("stop", help="stop the processes the state file names")
    t.add_argument("--state", type=pathlib.Path, default=DEFAULT_STATE)
    args = p.parse_args(argv)
    if args.command == "start":
        if args.workers < 1 or args.threads < 1:
            print("error: --workers/--threads: need at least 1", file=sys.stderr)
            return 2
        try:
            info = start(args.workers, args.threads, args.memory_limit, args.port,
                         args.dashboard_port, args.state)
        except RuntimeError as exc:
            print(f"error: dask cluster: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(info))
        print(f"run the job with: --runner DaskRunner --dask_client_address {info['address']}"
              f"\nstop it with:     python tools/dask_cluster.py stop --state {args.state}",
              file=sys.stderr)
        return 0
    stopped = stop(args.state)
    print(json.dumps({"stopped": stopped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
