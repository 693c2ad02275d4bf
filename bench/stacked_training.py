"""Benchmark (issue 24, item 2): does training N jobs that share dataset, model, preset
and training settings (e.g. the K folds) as one compiled step pay, on CPU?

For each model (small_cnn on 8x8x1 digits, stq_net on 32x32x1, 10 classes), preset and
N, at batch 64, every job with its own weights, optimizer state and batch (its own
random data), it times the training throughput of four forms:

- **seq** (a): what sweeper does today: each job is its own model compiled by
  ``sweeper.run.training.train`` (Adamax, cosine, cross-entropy on logits); one call of its
  Keras train function per step, the N jobs one after another. Per round each of the N
  jobs is timed on its own and seq(N) is their mean per-job cost.
- **loop** (b): one ``tf.function`` that calls the N models' own ``train_step`` in a
  Python loop (unrolled into one graph), one batch from each job's iterator: one
  dispatch per step for all N instead of N.
- **vec** (c): the N replicas' weights stacked on a new axis and each layer run once for
  all of them (grouped convolutions, batched matmuls: ``bench/stacked_vectorised.py``),
  one optimizer over the stacked variables (elementwise, so N independent ones).
- **spe** (control): one job, N steps per call (Keras ``steps_per_execution=N``): the
  per-dispatch saving without stacking anything.

How (as ``bench/train_step.py``): one worker process per thread count (TensorFlow fixes
its pools at start-up; 1 inter-op thread and N intra-op threads, as
``sweeper/run/placement.py`` sets per trial). Everything is built and warmed up first, then
the parent asks the workers for rounds in turn; in a round a worker times ``--steps``
consecutive calls of every (form, N), in an order rotated each round (the workers are
built at the same time, but time one at a time). A figure is the
median over rounds of the marginal cost per job-step (elapsed / calls / jobs per call);
a ratio is the median over rounds of that round's seq / form (paired, so slow phases of
the shared machine cancel). The load average is read before and after.

Also printed, per model and preset, from the 1-thread worker: the graph size (nodes of
the traced train function and its function library, before Grappler) of seq and of
loop/vec at the largest N; a batch-1 seq step (almost no arithmetic: the fixed cost of a
step); the arithmetic of a batch-64 step (estimated: 6 x the forward multiply-adds of
the convolutions and dense layers) and the rate it implies; the check that vec computes
the same network (``stacked_vectorised.verify``: logits, gradients against a 1-ulp
control, batch-norm statistics); and whether loop and spe train each job bit for bit
as seq does.

    python bench/stacked_training.py [--models small_cnn stq_net] [--presets fp int8 ...]
        [--ns 1 2 3 5] [--threads 1 2] [--repeats 7] [--steps 10] [--forms seq loop vec spe]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sweeper  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

SHAPES = {"small_cnn": ((8, 8, 1), 10), "stq_net": ((32, 32, 1), 10)}
PRESETS = ["fp", "int8", "ternary", "stq"]
FORMS = ["seq", "loop", "vec", "spe"]
BATCH = 64


# ---------------------------------------------------------------- worker side

def _settings():
    from sweeper.plan.entries import Train

    return Train(epochs=1, batch_size=BATCH, optimizer="adamax", learning_rate=1e-3, schedule="cosine")


def _data(shape, classes: int, seed: int, batch: int = BATCH):
    """A job's own random batch: (x, one-hot y)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((batch, *shape), dtype=np.float32)
    return x, np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]


def _iterator(x, y):
    import tensorflow as tf

    return iter(tf.data.Dataset.from_tensors((x, y)).repeat())


def _job_model(model_name: str, preset_name: str, seed: int):
    """One job's model, built as sweeper builds it and compiled by ``run.training.train`` (one
    real fit step on the job's data)."""
    import tensorflow as tf

    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.run.training import train

    shape, classes = SHAPES[model_name]
    tf.keras.utils.set_random_seed(seed)
    model = models.build(model_name, shape, classes, QUANTIZERS.get(preset_name))
    x, y = _data(shape, classes, seed)
    train(model, _settings(), x, y.argmax(axis=1), classes)
    return model


def _loop_function(models, iterators):
    """Form (b): the N models' own train steps, unrolled into one compiled function."""
    import tensorflow as tf

    @tf.function
    def run(its):
        return [model.train_step(next(it)) for model, it in zip(models, its)]

    return _bound(run, iterators)


def _bound(function, *args):
    """A zero-argument call of ``function(*args)`` that keeps both (for graph sizes)."""
    call = lambda: function(*args)  # noqa: E731
    call.function, call.args = function, args
    return call


def _spe_function(model_name: str, preset_name: str, steps: int, iterator):
    """Control: one job whose Keras train function runs ``steps`` steps per call."""
    model = _job_model(model_name, preset_name, seed=100 + steps)
    model.compile(optimizer=type(model.optimizer).from_config(model.optimizer.get_config()),
                  loss=model.loss, steps_per_execution=steps)
    return _bound(model.make_train_function(), iterator)


def _setup(model_name: str, preset_name: str, ns: list[int], forms: list[str], checks: bool):
    """{(form, N): (callable running one call, job-steps per call)} and, with ``checks``,
    the diagnostics dict; everything warmed up."""
    from stacked_vectorised import Vectorised

    shape, classes = SHAPES[model_name]
    top = max(ns)
    jobs = [_job_model(model_name, preset_name, seed=1 + i) for i in range(top)]
    iterators = [_iterator(*_data(shape, classes, 1 + i)) for i in range(top)]
    calls = {}
    if "seq" in forms:
        for i, (model, it) in enumerate(zip(jobs, iterators)):
            calls["job", i] = (_bound(model.train_function, it), 1)
        single = _job_model(model_name, preset_name, seed=200)  # its own: a new shape retraces
        calls["b1", 1] = (_bound(single.train_function, _iterator(*_data(shape, classes, 200, batch=1))), 1)
    for n in ns:
        if "loop" in forms:
            calls["loop", n] = (_loop_function(jobs[:n], iterators[:n]), n)
        if "vec" in forms:
            calls["vec", n] = (Vectorised(jobs[:n]).train_function(iterators[:n]), n)
        if "spe" in forms and n > 1:
            calls["spe", n] = (_spe_function(model_name, preset_name, n, iterators[0]), n)
    for call, _ in calls.values():
        for _ in range(3):
            _wait(call())
    info = _diagnostics(model_name, preset_name, jobs, iterators, calls, top) if checks else {}
    return calls, info


def _wait(result) -> None:
    import tensorflow as tf

    for value in tf.nest.flatten(result):
        value.numpy()


def _time(call, steps: int) -> float:
    """Milliseconds per call over ``steps`` consecutive calls (already warmed up)."""
    started = time.perf_counter()
    for _ in range(steps):
        result = call()
    _wait(result)
    return (time.perf_counter() - started) * 1000.0 / steps


def worker(threads: int, args) -> None:
    """Serve rounds on stdin/stdout: one JSON line of timings per 'round' line."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    calls, infos = {}, {}
    for m in args.models:
        for p in args.presets:
            calls[m, p], infos[f"{m}/{p}"] = _setup(m, p, args.ns, args.forms, checks=args.checks)
            print(f"[{threads} thread(s)] {m}/{p} built", file=sys.stderr, flush=True)
    print(json.dumps({"ready": True, "info": infos}), flush=True)
    for round_index, line in enumerate(sys.stdin):
        if line.strip() != "round":
            break
        timings = []
        for (m, p), table in calls.items():
            keys = list(table)
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                call, per_call = table[key]
                timings.append([m, p, *key, _time(call, args.steps) / per_call])
        print(json.dumps({"timings": timings}), flush=True)


def _diagnostics(model_name: str, preset_name: str, jobs, iterators, calls, top: int) -> dict:
    """Graph sizes, the arithmetic estimate, vec's equivalence check and loop's bit-identity."""
    from stacked_vectorised import verify

    from sweeper.models.quantizers import QUANTIZERS

    shape, classes = SHAPES[model_name]
    info = {"train_gflop": _train_flops(jobs[0]) / 1e9, "nodes": {}}
    for key in (("job", 0), ("loop", top), ("vec", top)):
        if key in calls:
            call = calls[key][0]
            info["nodes"]["/".join(map(str, key))] = _graph_nodes(call.function, *call.args)
    if "vec" in {form for form, _ in calls}:
        seeds = iter(range(300, 400))
        data = [_data(shape, classes, 300 + i) for i in range(2)]
        info["vec_check"] = verify(lambda: _job_model(model_name, preset_name, next(seeds)), 2,
                                   [d[0] for d in data], [d[1] for d in data],
                                   deterministic=not QUANTIZERS.get(preset_name).stochastic)
    for form in ("seq", "loop", "spe"):
        if form in {f for f, _ in calls} | {"seq"}:
            info[f"{form}_vs_seq"] = _identity(model_name, preset_name, form)
    return info


def _identity(model_name: str, preset_name: str, form: str, steps: int = 3) -> float:
    """Two jobs trained ``steps`` steps each on their own (seq) and by ``form`` ("loop":
    together, one call a step; "spe": each in one call of ``steps`` steps; "seq": on their
    own again, the control), from the same start on the same batches: the largest
    absolute weight difference. The global seed is reset to the job's before each trace
    (a new batch shape retraces), as a trial sets it before it builds and fits: random
    ops draw their seeds when traced."""
    import numpy as np
    import tensorflow as tf

    shape, classes = SHAPES[model_name]
    alone = [_job_model(model_name, preset_name, seed=400 + i) for i in range(2)]
    other = [_job_model(model_name, preset_name, seed=400 + i) for i in range(2)]
    iterators = lambda: [_iterator(*_data(shape, classes, 400 + i)) for i in range(2)]  # noqa: E731
    for models in (alone, other) if form == "seq" else (alone,):
        for i, (model, it) in enumerate(zip(models, iterators())):
            tf.keras.utils.set_random_seed(400 + i)
            for _ in range(steps):
                _wait(model.train_function(it))
    if form == "loop":
        tf.keras.utils.set_random_seed(400)
        loop = _loop_function(other, iterators())
        for _ in range(steps):
            _wait(loop())
    elif form == "spe":
        for i, (model, it) in enumerate(zip(other, iterators())):
            tf.keras.utils.set_random_seed(400 + i)
            model.compile(optimizer=model.optimizer, loss=model.loss, steps_per_execution=steps)
            _wait(model.make_train_function()(it))
    return max(float(np.max(np.abs(a.numpy() - b.numpy())))
               for m, n in zip(alone, other) for a, b in zip(m.weights, n.weights))


def _graph_nodes(function, *args) -> int:
    """Nodes of the traced function's graph plus those of its function library (loop
    bodies, gradients): what the executor dispatches per call, before Grappler."""
    graph_def = function.get_concrete_function(*args).graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def _train_flops(model) -> float:
    """Estimated floating-point operations of one training step at batch 64: 2 per
    multiply-add, 3 passes (forward, gradient of the inputs, of the weights), counting
    only convolutions and dense layers (the arithmetic that grows with the batch)."""
    macs = 0
    for layer in model.layers:
        kind = type(layer).__name__
        h, w = (layer.output_shape[1:3] if len(layer.output_shape) == 4 else (1, 1))
        if kind in ("QConv2D", "QDense"):
            macs += h * w * int(layer.kernel.shape.num_elements())
        elif kind == "QDepthwiseConv2D":
            macs += h * w * int(layer.depthwise_kernel.shape.num_elements())
        elif kind == "QSeparableConv2D":
            macs += h * w * (int(layer.depthwise_kernel.shape.num_elements())
                             + int(layer.pointwise_kernel.shape.num_elements()))
    return 6.0 * macs * BATCH



# ---------------------------------------------------------------- parent side

def _start(threads: int, args, checks: bool) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", str(threads), "--steps", str(args.steps),
               "--models", *args.models, "--presets", *args.presets, "--ns", *map(str, args.ns),
               "--forms", *args.forms] + (["--checks"] if checks else [])
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _read(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"worker exited with code {process.wait()}")
    return json.loads(line)


def _per_round(timings: list, threads: int, ns: list[int]) -> dict:
    """One round's {(threads, model, preset, form, N): ms per job-step}, seq(N) being the
    mean of jobs 0..N-1 timed alone."""
    out, jobs = {}, {}
    for m, p, form, n, ms in timings:
        if form == "job":
            jobs.setdefault((m, p), {})[n] = ms
        else:
            out[threads, m, p, form, n] = ms
    for (m, p), by_job in jobs.items():
        for n in ns:
            out[threads, m, p, "seq", n] = statistics.fmean(by_job[i] for i in range(n))
    return out


def measure(args) -> tuple[dict, dict, list]:
    """({key: [ms per job-step, one per round]}, the 1-thread worker's diagnostics,
    load averages read before each round and after the last)."""
    # Built at the same time (nothing is timed until every worker is ready).
    workers = {t: _start(t, args, checks=t == args.threads[0]) for t in args.threads}
    info = {}
    for threads, process in workers.items():
        ready = _read(process)  # read every worker's line, even when info is known
        info = info or ready["info"]
        print(f"worker with {threads} thread(s) ready", file=sys.stderr, flush=True)
    samples: dict = {}
    loads = []
    for repeat in range(args.repeats):
        loads.append(os.getloadavg()[0])
        for threads, process in workers.items():
            process.stdin.write("round\n")
            process.stdin.flush()
            for key, ms in _per_round(_read(process)["timings"], threads, args.ns).items():
                samples.setdefault(key, []).append(ms)
        print(f"round {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    loads.append(os.getloadavg()[0])
    for process in workers.values():
        process.stdin.close()
        process.wait()
    return samples, info, loads


def _cell(samples: dict, key: tuple, seq_key: tuple) -> str:
    """'ms  ratio' for a form: median ms per job-step, median of the rounds' seq/form."""
    if key not in samples:
        return f"{'-':>8}{'-':>7}"
    ratios = [s / f for s, f in zip(samples[seq_key], samples[key])]
    return f"{statistics.median(samples[key]):>8.2f}{statistics.median(ratios):>6.2f}x"


def report(samples: dict, info: dict, loads: list, args) -> None:
    median = statistics.median
    print(f"\nms per job-step (median of {args.repeats} rounds); ratio = median of the rounds' "
          f"seq / form (> 1: the form trains faster); load average (1 min) over the rounds "
          f"{min(loads):.2f} to {max(loads):.2f}, median {median(loads):.2f}")
    forms = [f for f in ("loop", "vec", "spe") if f in args.forms]
    header = f"{'model':<10}{'preset':<8}{'thr':>4}{'N':>3}{'seq':>8}" + "".join(
        f"{f:>8}{'ratio':>7}" for f in forms)
    print(header)
    for m in args.models:
        for p in args.presets:
            for t in args.threads:
                for n in args.ns:
                    seq_key = (t, m, p, "seq", n)
                    row = f"{m:<10}{p:<8}{t:>4}{n:>3}{median(samples[seq_key]):>8.2f}"
                    row += "".join(_cell(samples, (t, m, p, f, n), seq_key) for f in forms)
                    print(row)
    _report_info(samples, info, args)


def _report_info(samples: dict, info: dict, args) -> None:
    """Per model/preset: where a step's time goes, graph sizes and the checks."""
    t = args.threads[0]
    print(f"\nwhere the time goes ({t} thread(s)); graph nodes before Grappler; checks")
    for m in args.models:
        for p in args.presets:
            i = info.get(f"{m}/{p}", {})
            seq = statistics.median(samples[t, m, p, "seq", 1])
            b1 = samples.get((t, m, p, "b1", 1))
            gflop = i.get("train_gflop", float("nan"))
            line = (f"{m}/{p}: batch-64 step {seq:.2f} ms, estimated {gflop:.3f} GFLOP "
                    f"= {gflop / seq * 1000:.1f} GFLOP/s")
            if b1:
                line += f"; batch-1 step {statistics.median(b1):.2f} ms ({statistics.median(b1) / seq:.0%} of it)"
            print(line)
            print(f"  graph nodes: {i.get('nodes')}")
            print(f"  vec vs the Keras models: {i.get('vec_check')}")
            for form in ("seq", "loop", "spe"):
                if f"{form}_vs_seq" in i:
                    print(f"  {form} vs seq, 2 jobs after 3 steps from the same start, max |weight "
                          f"difference|: {i[f'{form}_vs_seq']}")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--presets", nargs="+", default=PRESETS,
                        choices=["fp", "int8", "int4", "int2", "ternary", "stq", "binary", "sbinary"])
    parser.add_argument("--ns", nargs="+", type=int, default=[1, 2, 3, 5])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--forms", nargs="+", choices=FORMS, default=FORMS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checks", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if "seq" not in args.forms:
        args.forms = ["seq", *args.forms]  # every ratio is to seq
    if any(n < 1 for n in args.ns) or args.repeats < 1 or args.steps < 1:
        parser.error("--ns, --repeats and --steps must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        worker(args.worker, args)
        sys.stdout.flush()
        os._exit(0)  # as bench/train_step.py: TensorFlow's teardown can hang with many models
    print(f"models {args.models}, presets {args.presets}, N {args.ns}, threads {args.threads}, "
          f"forms {args.forms}, {args.repeats} repeats of {args.steps} calls, batch {BATCH}, "
          f"{os.cpu_count()} cores", flush=True)
    report(*measure(args), args)


if __name__ == "__main__":
    main()
