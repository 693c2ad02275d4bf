"""Benchmark: what each quantizer preset costs per training step and per attack call,
relative to full precision (fp), at 1 and 2 TensorFlow intra-op threads.

For every model (stq_net and resnet8 on 32x32x1, as grids/paper.yaml's grayscale
CIFAR-10/SVHN; dscnn on 49x10x1 MFCCs, 12 classes; small_cnn on 8x8x1 digits) and every
preset it measures, at batch 64:

- **train**: one step of the real Keras training function, compiled by
  ``sweeper.run.training.train`` (Adamax, cosine schedule, cross-entropy on logits), i.e. what
  ``model.fit`` runs per batch, without fit's callbacks;
- **forward** / **grad**: ``predict`` and ``loss_gradient`` of the estimator the attacks
  use (``sweeper.attacks.estimator.make_classifier``, compiled forward and gradient).

How: one worker process per thread count (TensorFlow fixes its thread pools at start-up;
inter-op threads 1, as ``sweep._limit_threads`` sets). Every model/preset is built and
warmed up first. Then the parent asks the workers for rounds in turn (1 thread, 2
threads, 1 thread, ...; one worker computes at a time). In a round a worker times
``--steps`` consecutive calls of every (model, kind, preset), presets round-robin in an
order rotated each round; a figure is the median over ``--repeats`` rounds of the
marginal cost per call (elapsed / steps). The machine is shared and noisy: medians of
interleaved repeats make ratios meaningful, absolute times much less so.

Prints, per model: each preset's ratio to fp for train/forward/grad at each thread count,
the 2-thread speed-up (t1/t2) and scaling efficiency (speed-up / 2) of each preset's
train step, and fp's absolute ms per training step at 1 thread (machine-specific: for
extrapolating core-hours on this kind of machine only).

    python bench/train_step.py [--models stq_net dscnn] [--presets fp int8 stq]
                               [--threads 1 2] [--repeats 7] [--steps 10] [--quick]

``--stock`` adds rows PRESET/qk: the same preset built with QKeras's stock quantizers
instead of sweeper's lean ones (sweeper.models.quantizers.lean), in the same interleaved run.
``--quick`` (overrides --models, --presets, --repeats, --steps): small_cnn and stq_net,
presets fp/int8/stq/sbinary, 3 repeats of 5 steps.

``--defenses jr dq ...`` (or ``all``) adds kinds train+DEFENSE: one step of each
training-time defense (``sweeper.defenses``, default parameters: jr with 1 projection,
pgd_at with 7 steps, dbwt cycling 8/4/2 bits) on its own copy of the model, compiled as
``training.train`` compiles it, timed in the same interleaved rounds; a second table gives
each one's cost relative to the plain train step of the same preset. A defense a preset
cannot take (dbwt needs a fixed-point preset) is n/a.
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

import sweeper  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# model -> (input shape, classes), the shapes the paper grid gives each model
SHAPES = {
    "stq_net": ((32, 32, 1), 10),
    "resnet8": ((32, 32, 1), 10),
    "dscnn": ((49, 10, 1), 12),
    "small_cnn": ((8, 8, 1), 10),
}
PRESETS = ["fp", "int8", "int4", "int2", "ternary", "stq", "binary", "sbinary"]
KINDS = ("train", "forward", "grad")
STOCK = "/qk"  # preset suffix: built with QKeras's stock quantizers (--stock)
BATCH = 64
QUICK = {"models": ["small_cnn", "stq_net"], "presets": ["fp", "int8", "stq", "sbinary"],
         "repeats": 3, "steps": 5}


# ---------------------------------------------------------------- worker side

def _setup(model_name: str, preset_name: str, defense_names: list[str] = ()):
    """Build, compile (through training.train, one real fit step) and warm up one model
    (and one per defense): returns {kind: zero-argument callable running one call of
    that kind}."""
    import numpy as np
    import tensorflow as tf

    from sweeper import models
    from sweeper.attacks.estimator import make_classifier
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.plan.entries import Train
    from sweeper.run.training import train

    shape, classes = SHAPES[model_name]
    stock = preset_name.endswith(STOCK)
    if stock:  # QKeras's own quantizers, as before sweeper's lean ones
        import sweeper.models.quantizers as quantizers

        lean_make = quantizers.make
        models.make = quantizers.make = quantizers.make_original
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, *shape), dtype=np.float32)
    y = rng.integers(0, classes, BATCH)
    tf.keras.utils.set_random_seed(0)
    model = models.build(model_name, shape, classes, QUANTIZERS.get(preset_name.removesuffix(STOCK)))
    if stock:
        models.make = quantizers.make = lean_make
    train(model, Train(epochs=1, batch_size=BATCH, optimizer="adamax", learning_rate=1e-3,
                       schedule="cosine"), x, y, classes)
    onehot = tf.keras.utils.to_categorical(y, classes)
    batches = iter(tf.data.Dataset.from_tensors((x, onehot)).repeat())
    classifier = make_classifier(model, classes, shape, (0.0, 1.0))
    calls = {
        "train": lambda: model.train_function(batches),
        "forward": lambda: classifier.predict(x),
        "grad": lambda: classifier.loss_gradient(x, onehot),
    }
    for name in defense_names:
        step = _defended_step(model_name, preset_name, name, x, y, batches)
        if step is not None:
            calls[f"train+{name}"] = step
    for call in calls.values():
        for _ in range(3):
            call()
    return calls


def _defended_step(model_name: str, preset_name: str, defense_name: str, x, y, batches):
    """One compiled training step of ``defense_name`` on a fresh copy of the model, as
    ``training.train`` builds it (the same wrapper, optimizer and loss); None when the
    defense cannot train this preset."""
    import tensorflow as tf

    from sweeper import defenses, models
    from sweeper.defenses import base
    from sweeper.errors import UserError
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.plan.entries import Train
    from sweeper.run.training import train

    shape, classes = SHAPES[model_name]
    preset = QUANTIZERS.get(preset_name.removesuffix(STOCK))
    try:
        defense = defenses.build(defense_name, clip_values=(0.0, 1.0), preset=preset)
    except UserError:
        return None
    tf.keras.utils.set_random_seed(0)
    model = models.build(model_name, shape, classes, preset)
    train(model, Train(epochs=1, batch_size=BATCH, optimizer="adamax", learning_rate=1e-3,
                       schedule="cosine"), x, y, classes, defense=defense)
    # train() fitted a wrapper of its own; this one is the same (model, optimizer, loss)
    wrapper = base.wrap(model, defense, model.loss, model.optimizer, 0)
    step = wrapper.make_train_function()
    return lambda: step(batches)


def _time(call, steps: int) -> float:
    """Milliseconds per call over `steps` consecutive calls (already warmed up)."""
    started = time.perf_counter()
    for _ in range(steps):
        result = call()
    if isinstance(result, dict):  # train_function's logs: wait for the last step
        [value.numpy() for value in result.values()]
    return (time.perf_counter() - started) * 1000.0 / steps


def worker(threads: int, model_names: list[str], presets: list[str], steps: int,
           defense_names: list[str] = ()) -> None:
    """Serve rounds on stdin/stdout: one JSON line of timings per 'round' line."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    calls = {(m, p): _setup(m, p, defense_names) for m in model_names for p in presets}
    print(json.dumps({"ready": True}), flush=True)
    for round_index, line in enumerate(sys.stdin):
        if line.strip() != "round":
            break
        shift = round_index % len(presets)
        order = presets[shift:] + presets[:shift]
        timings = []
        for m in model_names:
            for kind in _kinds(defense_names):
                for p in order:
                    if kind in calls[m, p]:
                        timings.append([m, p, kind, _time(calls[m, p][kind], steps)])
        print(json.dumps({"timings": timings}), flush=True)


# ---------------------------------------------------------------- parent side

def _kinds(defense_names) -> tuple[str, ...]:
    return (*KINDS, *(f"train+{name}" for name in defense_names))


def _start(threads: int, args) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", str(threads), "--steps", str(args.steps),
               "--models", *args.models, "--presets", *args.presets]
    if args.defenses:
        command += ["--defenses", *args.defenses]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    _read(process)  # built and warmed up
    return process


def _read(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"worker exited with code {process.wait()}")
    return json.loads(line)


def measure(args) -> dict:
    """{(threads, model, preset, kind): [ms per call, one per round]}, rounds alternated
    between the thread counts' workers."""
    workers = {}
    for threads in args.threads:  # started one after the other: builds do not overlap
        workers[threads] = _start(threads, args)
        print(f"worker with {threads} thread(s) ready", file=sys.stderr, flush=True)
    samples: dict = {}
    for repeat in range(args.repeats):
        for threads, process in workers.items():
            process.stdin.write("round\n")
            process.stdin.flush()
            for m, p, kind, ms in _read(process)["timings"]:
                samples.setdefault((threads, m, p, kind), []).append(ms)
        print(f"round {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    for process in workers.values():
        process.stdin.close()
        process.wait()
    return {key: statistics.median(values) for key, values in samples.items()}


def report(medians: dict, args) -> None:
    thread_cols = [f"{kind}@{t}" for t in args.threads for kind in KINDS]
    scaling = len(args.threads) > 1
    for m in args.models:
        print(f"\n{m} {SHAPES[m][0]}, batch {BATCH}: ratio to fp (median of {args.repeats})")
        header = f"{'preset':<9}" + "".join(f"{c:>11}" for c in thread_cols)
        print(header + (f"{'speedup':>9}{'eff':>6}" if scaling else ""))
        for p in args.presets:
            row = f"{p:<9}"
            for t in args.threads:
                for kind in KINDS:
                    fp = medians.get((t, m, "fp", kind))
                    value = medians[t, m, p, kind] / fp if fp else float("nan")
                    row += f"{value:>11.2f}"
            if scaling:
                t1, t2 = args.threads[0], args.threads[1]
                speedup = medians[t1, m, p, "train"] / medians[t2, m, p, "train"]
                row += f"{speedup:>9.2f}{speedup / (t2 / t1):>6.2f}"
            print(row)
        t1 = args.threads[0]
        if (t1, m, "fp", "train") in medians:
            print(f"fp absolute at {t1} thread(s) (machine-specific): train "
                  f"{medians[t1, m, 'fp', 'train']:.2f} ms/step, forward "
                  f"{medians[t1, m, 'fp', 'forward']:.2f} ms, grad "
                  f"{medians[t1, m, 'fp', 'grad']:.2f} ms per batch of {BATCH}")
        if args.defenses:
            report_defenses(medians, args, m)


def report_defenses(medians: dict, args, m: str) -> None:
    """Each defense's step against the plain train step of the same preset and threads."""
    print(f"\n{m}: defended train step / plain train step, same preset (median of {args.repeats})")
    columns = [(t, name) for t in args.threads for name in args.defenses]
    print(f"{'preset':<9}" + "".join(f"{name + '@' + str(t):>13}" for t, name in columns))
    for p in args.presets:
        row = f"{p:<9}"
        for t, name in columns:
            defended = medians.get((t, m, p, f"train+{name}"))
            row += f"{defended / medians[t, m, p, 'train']:>13.2f}" if defended else f"{'n/a':>13}"
        print(row)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--presets", nargs="+", default=PRESETS,
                        choices=PRESETS + [p + STOCK for p in PRESETS])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--stock", action="store_true",
                        help="also time every quantized preset with QKeras's stock quantizers "
                             "(rows PRESET/qk), interleaved: before/after sweeper's lean ones")
    parser.add_argument("--defenses", nargs="+", default=[], metavar="DEFENSE",
                        help="also time each defense's training step (names from "
                             "sweeper.defenses, or 'all'), relative to the plain step")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.defenses = _defense_names(args.defenses, parser)
    if "fp" not in args.presets:
        args.presets = ["fp", *args.presets]  # every ratio is to fp
    if args.stock and not args.worker:
        args.presets += [p + STOCK for p in args.presets if p != "fp"]
    return args


def _defense_names(names: list[str], parser) -> list[str]:
    from sweeper.defenses import DEFENSES, NONE

    every = [name for name in DEFENSES.names() if name != NONE]
    if names == ["all"]:
        return every
    for name in names:
        if name not in every:
            parser.error(f"unknown defense {name!r}; available: all, {', '.join(every)}")
    return names


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        worker(args.worker, args.models, args.presets, args.steps, args.defenses)
        # Leave without interpreter teardown: with 60 models and their compiled functions
        # alive, TensorFlow's shutdown can hang after the last round (seen once), and the
        # parent waits for this process before it prints.
        sys.stdout.flush()
        os._exit(0)
    print(f"models {args.models}, presets {args.presets}, threads {args.threads}, "
          f"defenses {args.defenses or 'none'}, "
          f"{args.repeats} repeats of {args.steps} steps", flush=True)
    report(measure(args), args)


if __name__ == "__main__":
    main()
