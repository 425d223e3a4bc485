"""Beam's DaskRunner (apache_beam.runners.dask, Beam 2.77) with its data-loss defects fixed.

Beam's runner translates each Beam transform into a `dask.bag` operation and submits the graph
to a Dask distributed scheduler. As released it loses or misroutes data without an error
(docs/beam.md, "Dask" has the probes); this runner keeps Beam's translation of Create,
GroupByKey and Flatten and Beam's options (`--dask_client_address`, ...) and changes only:

- ParDo: a bundle's outputs are collected *after* `finish_bundle` (BatchElements' last batch,
  file sinks' shard records); each output tag becomes its own collection (with_outputs);
  counters and distributions are recorded per bundle and returned with its outputs; a DoFn is
  set up once per worker thread and reused for later bundles, instead of once per partition.
- Side inputs are gathered by one task that the reading tasks depend on (Beam's runner
  computes the side input's bag from inside each reading task).
- Every leaf of the graph is computed, not only the last transform visited.
- Reshuffle spreads its input over the cluster's worker threads (it was a pass-through, so a
  pipeline that lists its files in one place ran on one worker).
- `result.metrics()` answers committed and attempted counters, distributions and gauges.

Still as in Beam's runner: the global window only (WindowInto is a pass-through, timestamps
are dropped), `Read`/`Impulse` produce nothing, no state or timers, no splittable DoFns.

Use: `--runner beam_jobs.runners.dask.DaskRunner --dask_client_address HOST:PORT` (the job's
CLI maps `--runner DaskRunner` here).
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import uuid
from typing import Any, Optional

import apache_beam as beam
import dask
from apache_beam import pvalue
from apache_beam.internal import pickler
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import (DoFnContext, DoFnInvoker, DoFnSignature, Receiver,
                                        _OutputHandler)
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import transform_evaluator as beam_ops
from apache_beam.runners.dask.overrides import _Reshuffle, dask_overrides
from apache_beam.runners.direct.direct_metrics import DirectMetrics
from apache_beam.runners.runner import PipelineState
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import window
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.utils import counters

from common.cli import UserError

DaskOptions = beam_dask.DaskOptions


class _NoPartitionSizeNotice(logging.Filter):
    # Beam's Create translation warns once per Create that its default partition size
    # changed from 1 to 128 in an earlier Beam release: a note for Beam's upgraders, eight
    # identical lines per run of this job.
    def filter(self, record) -> bool:
        return not record.getMessage().startswith("The new default partition size is")


logging.getLogger(beam_ops.__name__).addFilter(_NoPartitionSizeNotice())

# A ParDo's bag holds (tag, value) pairs; this tag carries the bundle's metric updates.
_METRICS = "__fcnseg_dask_metrics__"
# Reshuffle's partitions per worker thread when --dask_npartitions is not given: a few per
# thread so that a slow partition does not leave the other threads idle at the end.
PARTITIONS_PER_THREAD = 2


# --- worker side ---------------------------------------------------------------------------

class _DoFnPool:
    """Set-up DoFn instances of this worker process, by (run, transform) token.

    A DoFn instance is used by one thread at a time (Beam's contract), so each concurrent
    bundle takes an idle instance or makes one; `setup()` thus runs once per worker thread
    and transform, not once per Dask partition. The launcher releases a run's instances
    (teardown) when the run ends.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: dict[str, list] = collections.defaultdict(list)
        self._all: dict[str, list] = collections.defaultdict(list)
        self._specs: dict[str, dict] = {}

    def acquire(self, token: str, pickled_fn: bytes) -> DoFnInvoker:
        """An idle set-up instance of the token's DoFn, or a new one (set up here)."""
        with self._lock:
            if self._idle[token]:
                return self._idle[token].pop()
        # The invoker that ran setup() also runs teardown() (it holds setup's contexts).
        instance = DoFnInvoker.create_invoker(DoFnSignature(pickler.loads(pickled_fn)),
                                              output_handler=None, process_invocation=False)
        instance.invoke_setup()
        with self._lock:
            self._all[token].append(instance)
        return instance

    def spec(self, token: str, pickled_spec: bytes) -> dict:
        with self._lock:
            if token not in self._specs:
                self._specs[token] = pickler.loads(pickled_spec)
            return self._specs[token]

    def release(self, token: str, instance: DoFnInvoker) -> None:
        with self._lock:
            self._idle[token].append(instance)

    def discard(self, token: str, instance: DoFnInvoker) -> None:
        # After a failed bundle the instance's state is unknown: Beam drops it too.
        with self._lock:
            if instance in self._all[token]:
                self._all[token].remove(instance)
        _teardown(instance)

    def close_run(self, run_id: str) -> int:
        def of_run(tokens):
            return [t for t in tokens if t.startswith(run_id + "/")]

        with self._lock:
            instances = [i for t in of_run(self._all) for i in self._all.pop(t)]
            for t in of_run(self._idle):
                del self._idle[t]
            for t in of_run(self._specs):
                del self._specs[t]
        for instance in instances:
            _teardown(instance)
        return len(instances)


def _teardown(instance: DoFnInvoker) -> None:
    try:
        instance.invoke_teardown()
    except Exception:  # noqa: BLE001 - teardown is best effort in Beam as well
        pass


_POOL = _DoFnPool()


def close_run(run_id: str) -> int:
    """Tear down this process's DoFns of one run (run on every worker when the run ends)."""
    return _POOL.close_run(run_id)


class _ListReceiver(Receiver):
    def __init__(self, tag: Optional[str], out: list):
        self.tag, self.out = tag, out

    def receive(self, windowed_value):
        self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):
    """Tag -> receiver, made on first use; every tag's values go to one list, tagged."""

    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        receiver = self[tag] = _ListReceiver(tag, self.out)
        return receiver


def _side_input_maps(specs, values) -> list:
    return [SideInputMap(view_class, view_options,
                         [beam_ops.get_windowed_value(v, window.GlobalWindows()) for v in vals])
            for (view_class, view_options), vals in zip(specs, values)]


def run_bundle(items, token: str, label: str, pickled_fn: bytes, pickled_spec: bytes,
               *side_values) -> list:
    """One Dask partition as one Beam bundle: [(tag, value), ..., (_METRICS, updates)]."""
    spec = _POOL.spec(token, pickled_spec)
    window_fn = spec["window_fn"]
    out: list = []
    receivers = _Receivers(out)
    handler = _OutputHandler(
        window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
        per_element_output_counter=None, output_batch_converter=None,
        process_yields_batches=False, process_batch_yields_elements=False)
    instance = _POOL.acquire(token, pickled_fn)
    container = MetricsContainer(label)
    sampler = statesampler.StateSampler("", counters.CounterFactory())
    previous = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(label, "process", metrics_container=container):
            invoker = DoFnInvoker.create_invoker(
                instance.signature, output_handler=handler,
                context=DoFnContext(label, state=None),
                side_inputs=_side_input_maps(spec["side_specs"], side_values),
                input_args=list(spec["args"]), input_kwargs=dict(spec["kwargs"]),
                user_state_context=None,
                bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
            invoker.invoke_start_bundle()
            for item in items:
                invoker.invoke_process(beam_ops.get_windowed_value(item, window_fn))
            # Beam's runner read the outputs before this call, dropping what it emits.
            invoker.invoke_finish_bundle()
    except BaseException:
        _POOL.discard(token, instance)
        raise
    finally:
        statesampler.set_current_tracker(previous)
    _POOL.release(token, instance)
    out.append((_METRICS, container.get_cumulative()))
    return out


def _values_of(pairs, tag):
    return [value for t, value in pairs if t == tag]


def _metrics_of(pairs):
    return [value for t, value in pairs if t == _METRICS]


def _drain(partition) -> list:
    for _ in partition:
        pass
    return []


def _concat(parts) -> list:
    return list(itertools.chain.from_iterable(parts))


# --- launcher side -------------------------------------------------------------------------

class _Translator(PipelineVisitor):
    """Beam graph -> one dask bag per PCollection (Beam's visitor keyed bags by producer)."""

    def __init__(self, run_id: str, bag_kwargs: dict, reshuffle_partitions: int):
        self.run_id = run_id
        self.bag_kwargs = bag_kwargs
        self.reshuffle_partitions = reshuffle_partitions
        self.bags: dict[pvalue.PCollection, Any] = {}
        self.consumed: set = set()
        self.metric_bags: list = []

    def _input_bag(self, pcoll):
        self.consumed.add(pcoll)
        return self.bags.get(pcoll)

    def visit_transform(self, node) -> None:
        transform = node.transform
        inputs = [p for p in node.inputs if not isinstance(p, pvalue.PBegin)]
        bags = [self._input_bag(p) for p in inputs]
        # Exact class, as Beam's table: its subclasses (WindowInto, the GroupByKey's
        # _GroupAlsoByWindow) stay pass-throughs, GroupByKey's grouping already done.
        if type(transform) is beam.ParDo:
            self._par_do(node, bags[0] if bags else None)
            return
        if isinstance(transform, _Reshuffle):
            bag = bags[0]
            if bag is not None and bag.npartitions < self.reshuffle_partitions:
                bag = bag.repartition(npartitions=self.reshuffle_partitions)
        else:
            op_class = beam_ops.TRANSLATIONS.get(type(transform), beam_ops.NoOp)
            op = op_class(node, bag_kwargs=self.bag_kwargs)
            if isinstance(op, beam_ops.Flatten):
                bag = op.apply([b for b in bags if b is not None])
            else:
                bag = op.apply(bags[0] if len(bags) == 1 else (bags or None))
        for out in node.outputs.values():
            self.bags[out] = bag

    def _par_do(self, node, input_bag) -> None:
        transform = node.transform
        main_input = next(iter(node.main_inputs.values()))
        window_fn = main_input.windowing.windowfn
        args, kwargs = transform.raw_side_inputs
        side_specs, side_items = [], []
        for side in node.side_inputs:
            self.consumed.add(side.pvalue)
            side_specs.append((type(side), side._view_options()))
            # One task gathers the collection; every task that reads it depends on that
            # task. (A bag Item argument, bag.reduction(...), gets its upstream graph copied
            # under new keys per consumer: recomputed, side effects and all.)
            side_items.append(dask.delayed(_concat)(
                self.bags[side.pvalue].to_delayed(optimize_graph=False)))
        token = f"{self.run_id}/{node.full_label}"
        # Plain arguments travel pickled: dask would take a tuple that starts with a
        # callable in them for a task of its own.
        spec = pickler.dumps({"window_fn": window_fn, "args": tuple(args),
                              "kwargs": dict(kwargs), "side_specs": side_specs})
        pairs = input_bag.map_partitions(
            run_bundle, token, node.full_label, pickler.dumps(transform.fn), spec,
            *side_items)
        for out in node.outputs.values():
            self.bags[out] = pairs.map_partitions(_values_of, out.tag)
        self.metric_bags.append(pairs.map_partitions(_metrics_of))

    def leaves(self) -> list:
        seen, out = set(), []
        for pcoll, bag in self.bags.items():
            if pcoll in self.consumed or bag is None or bag.name in seen:
                continue
            seen.add(bag.name)
            out.append(bag.map_partitions(_drain))
        return out


class DaskRunnerResult(beam_dask.DaskRunnerResult):
    """Beam's result plus metrics; tears down the run's DoFns on the workers at the end."""

    def __init__(self, client, futures, metrics_future, run_id: str):
        super().__init__(client, futures)
        self._metrics_future = metrics_future
        self._run_id = run_id
        self._metrics = DirectMetrics()
        self._closed = False

    def wait_until_finish(self, duration=None) -> str:
        try:
            state = super().wait_until_finish(duration)
        except BaseException:
            self._close()
            raise
        if state == PipelineState.DONE:
            for updates in self._metrics_future.result():
                # Only bundles whose outputs were kept report here (a bundle retried after
                # a lost worker reports once), so attempted == committed.
                self._metrics.commit_logical(None, updates)
                self._metrics.commit_physical(None, updates)
            self._close()
        return self._state

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.client.run(close_run, self._run_id)
        except Exception:  # noqa: BLE001 - a worker that is gone has nothing to tear down
            pass
        self.client.close()

    def metrics(self):
        return self._metrics


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner with the fixes listed in this module's docstring."""

    def run_pipeline(self, pipeline, options):
        import dask.bag as db
        import dask.distributed as ddist

        dask_options = options.view_as(DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
        try:
            client = ddist.Client(**dask_options)
        except OSError as exc:  # refused, timed out, unknown host: one line, not a traceback
            raise UserError(dask_options.get("address") or "--dask_client_address",
                            f"cannot connect to the Dask scheduler: {exc}") from None
        threads = sum(client.nthreads().values()) or 1
        partitions = bag_kwargs.get("npartitions") or threads * PARTITIONS_PER_THREAD

        pipeline.replace_all(dask_overrides())
        run_id = uuid.uuid4().hex
        translator = _Translator(run_id, bag_kwargs, partitions)
        pipeline.visit(translator)
        leaves = translator.leaves()
        metrics = (db.concat(translator.metric_bags) if translator.metric_bags
                   else db.from_sequence([]))
        # One graph, optimised as a whole: a collection read by several consumers is
        # computed once. (dask.optimize(*collections) optimises each one on its own and
        # renames what it fuses, so shared parts would run once per leaf.)
        computed = client.compute([*leaves, metrics])
        return DaskRunnerResult(client, computed[:-1], computed[-1], run_id)
