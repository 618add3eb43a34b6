"""Run a study's models: here, one after another (``local``), or one Ray task per model (``ray``).

Study key ``runtime.executor`` (:class:`~monai_emotion.study.runtime_settings.RuntimeSettings`).
Both executors compute the same models with the same code (:class:`~monai_emotion.study.bundle.CNNRunner`
for a CNN, :class:`~monai_emotion.study.stages.LinearStage` for a linear model and its
permutations), so a study's ``results.csv`` does not depend on the executor.

With Ray, the tasks are, in plan order: every CNN model and CNN permutation model not yet
done (``ray_cnn`` resources), every linear model not yet done and every missing linear
permutation seed (``ray_linear``), and one task each for the observer-sensitivity refits,
the peer decoders and the dimensions ridge (small; they stay whole stages). A task prepares
the study's context once per worker process (the cache must already be on storage the
workers share: the driver builds it), checks ``done()`` again before it computes, and writes
its files into the results folder atomically (a ``model.json`` or ``predictions.csv`` appears
last), so a retried or killed attempt leaves nothing a later ``done()`` would trust. A
permutation seed's scores go to ``permutations_linear.parts/<seed>.csv``; the driver merges
them into ``permutations_linear.csv`` in seed order. A worker that dies (killed, out of
memory, node lost) has its task retried by Ray up to ``runtime.ray_max_retries`` times; an
error raised by the task itself is not retried: it stops the study with that error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from monai_emotion.errors import ConfigError, MonaiEmotionError
from monai_emotion.fileio import atomic_write_text, json_digest
from monai_emotion.study.context import StudyContext
from monai_emotion.study.dimensions import DimensionStage
from monai_emotion.study.permutation import LinearPermutations, read_null, stored_permutations
from monai_emotion.study.plan import ModelSpec, selected, selected_permutations
from monai_emotion.study.stages import FileLog, LinearStage, PeerStage, Timings, baseline_stage

__all__ = ["run_cnn", "cnn_permutation_specs", "local_models", "ray_models", "run_task", "TASK_LOG"]

#: where a task records the process (host and pid) of each of its attempts, under the results folder
TASK_LOG = Path("logs") / "tasks"


def run_cnn(ctx: StudyContext, specs: Sequence[ModelSpec], force: bool) -> None:
    """Train and test ``specs`` here, one after another, skipping finished ones."""
    todo = [s for s in specs if force or not ctx.cnn.done(s)]
    for n, spec in enumerate(todo, start=1):
        record = ctx.cnn.run(spec)
        ctx.log(f"  cnn [{n}/{len(todo)}] {spec.id}: trained in {record['train_seconds']:.1f} s, "
                f"tested {len(spec.test_sets)} set(s) in {sum(record['eval_seconds'].values()):.1f} s")
    if len(specs) > len(todo):
        ctx.log(f"  cnn: {len(specs) - len(todo)} model(s) already done, skipped")


def cnn_permutation_specs(ctx: StudyContext) -> list[ModelSpec]:
    """The permuted CNN models of the study (``permutations.cnn`` seeds x ``cnn_experiments``)."""
    from monai_emotion.study.permutation import permutation_seeds

    perms = ctx.study.permutations
    return [s.permuted(seed) for seed in permutation_seeds(perms.first_seed, perms.cnn)
            for s in ctx.plan.models if s.experiment in perms.cnn_experiments]


def _cnn_stages(ctx: StudyContext, tokens: list[str] | None, force: bool, timings: Timings) -> None:
    ctx.log("CNN models (through the bundle configs):")
    with timings.timed("cnn"):
        run_cnn(ctx, [s for s in ctx.plan.models if selected("cnn", s, tokens)], force)
    if ctx.study.permutations.cnn and selected_permutations("cnn", tokens):
        specs = cnn_permutation_specs(ctx)
        ctx.log(f"cnn permutations: {ctx.study.permutations.cnn} x {list(ctx.study.permutations.cnn_experiments)} "
                f"({len(specs)} models)")
        with timings.timed("cnn_permutations"):
            run_cnn(ctx, specs, force)


def local_models(ctx: StudyContext, tokens: list[str] | None, force: bool, timings: Timings,
                 baseline_todo: bool) -> None:
    """Today's executor: the CPU stages in a second process (or inline), the CNNs here."""
    study, root = ctx.study, ctx.root
    baseline_args = (str(study.source), str(root), tokens, force)
    pool, worker = None, None
    if baseline_todo and study.runtime.parallel_baseline:
        import multiprocessing

        # spawn, not fork: the parent already holds torch and BLAS thread pools
        pool = multiprocessing.get_context("spawn").Pool(1)
        worker = pool.apply_async(baseline_stage, baseline_args)
        ctx.log(f"linear baseline, peers and permutations: in a second process (log {root / 'logs' / 'baseline.log'})")
    elif baseline_todo:
        ctx.log("linear baseline and peers:")
        timings.update(baseline_stage(*baseline_args, log=ctx.log))
    try:
        _cnn_stages(ctx, tokens, force, timings)
        if worker is not None:
            waited = time.perf_counter()
            parallel = worker.get()  # re-raises the worker's error, if any
            timings.update({f"{k} (parallel)": v for k, v in parallel.items() if k != "prepare"})
            ctx.log(f"linear baseline finished (waited {time.perf_counter() - waited:.0f} s for it)")
    finally:
        if pool is not None:
            pool.terminate()  # idle after get(); on an error or Ctrl-C it stops the worker too


# ---------------------------------------------------------------- Ray: the worker side

#: prepared contexts of this worker process, by study settings and results folder
_CONTEXTS: dict[tuple[str, str], StudyContext] = {}


def _worker_context(config: str, root: str) -> StudyContext:
    import torch

    from monai_emotion.study.config import load_study
    from monai_emotion.study.context import prepare_context

    study = load_study(config)
    key = (json_digest(study.to_dict()), root)
    if key not in _CONTEXTS:
        torch.set_num_threads(study.runtime.threads)
        log = FileLog(Path(root) / "logs" / f"worker-{os.uname().nodename}-{os.getpid()}.log")
        _CONTEXTS[key] = prepare_context(study, Path(root), log)  # reads the cache the driver built
    return _CONTEXTS[key]


def _parts(root: Path) -> Path:
    return root / "permutations_linear.parts"


def _task_name(kind: str, payload: Any) -> str:
    name = payload.id if isinstance(payload, ModelSpec) else str(payload)
    return f"{kind}:{name}"


def _record_attempt(root: Path, name: str) -> None:
    """Append this attempt's host and pid to the task's log (which process ran which model)."""
    path = root / TASK_LOG / (name.replace("/", "__").replace(":", "--") + ".txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(f"{os.uname().nodename} {os.getpid()} {time.time():.3f}\n")


def run_task(config: str, root: str, kind: str, payload: Any, force: bool, tokens: list[str] | None) -> Any:
    """One Ray task: one model (``cnn``, ``linear``), one permutation seed, or one small stage.

    Returns what the driver logs (seconds, or a CNN model's record); ``None`` when the model
    was already done (a retry after its files were complete).
    """
    ctx = _worker_context(config, root)
    _record_attempt(ctx.root, _task_name(kind, payload))
    start = time.perf_counter()
    if kind == "cnn":
        return None if not force and ctx.cnn.done(payload) else ctx.cnn.run(payload)
    linear = LinearStage(ctx)
    if kind == "linear":
        if force or not linear.done(payload):
            linear.fit_one(payload)
    elif kind == "linear_permutation":
        _parts(ctx.root).mkdir(parents=True, exist_ok=True)
        LinearPermutations(linear.baseline(), ctx.plan.models, _parts(ctx.root) / f"{payload}.csv").run([payload], ctx.log)
    elif kind == "observers":
        linear.run_other_observers([s for s in ctx.plan.models if selected("linear", s, tokens)], force)
    elif kind == "peers":
        PeerStage(ctx).run(tokens, force)
    elif kind == "dimensions":
        DimensionStage(ctx).run(tokens, force)
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    return round(time.perf_counter() - start, 2)


# ---------------------------------------------------------------- Ray: the driver side


def _ray(address: str | None) -> Any:
    """The ``ray`` module, connected to the cluster at ``address`` (started here when ``None``)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("runtime.executor is 'ray' but Ray is not installed",
                          fix="pip install 'monai-emotion[ray]' (or set runtime.executor to 'local')") from None
    if not ray.is_initialized():
        # the workers find the cache and synthetic data where this process does
        env = {k: os.environ[k] for k in ("MONAI_EMOTION_HOME",) if k in os.environ}
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False)
    return ray


def _ray_tasks(ctx: StudyContext, tokens: list[str] | None, force: bool) -> list[tuple[str, Any, str]]:
    """``(kind, payload, resources)`` of every task to run, in plan order."""
    study = ctx.study
    tasks: list[tuple[str, Any, str]] = []
    cnn = [s for s in ctx.plan.models if selected("cnn", s, tokens)]
    if study.permutations.cnn and selected_permutations("cnn", tokens):
        cnn += cnn_permutation_specs(ctx)
    tasks += [("cnn", s, "ray_cnn") for s in cnn if force or not ctx.cnn.done(s)]
    linear = LinearStage(ctx)
    if study.baseline.enabled:
        specs = [s for s in ctx.plan.models if selected("linear", s, tokens)]
        fits = [("linear", s, "ray_linear") for s in specs if force or not linear.done(s)]
        tasks += fits
        other = linear.other_observers()
        # as the local stage: refitted along with the linear models, or when never asked yet
        if other and (fits or not (ctx.root / "models" / f"linear_{other}").is_dir()):
            tasks.append(("observers", "all", "ray_linear"))
        if study.permutations.linear and selected_permutations("linear", tokens):
            stored = stored_permutations(linear.null_path, {m.experiment for m in ctx.plan.models})
            tasks += [("linear_permutation", seed, "ray_linear") for seed in linear.seeds() if seed not in stored]
    if study.peers.enabled and PeerStage(ctx).todo(tokens, force):
        tasks.append(("peers", "all", "ray_linear"))
    if study.dimensions.enabled and DimensionStage(ctx).todo(tokens, force):
        tasks.append(("dimensions", "all", "ray_linear"))
    return tasks


def _merge_permutations(ctx: StudyContext, seeds: Sequence[int]) -> None:
    """Append the scores of ``seeds`` (their part files) to ``permutations_linear.csv``, in seed order."""
    if not seeds:
        return
    path = LinearStage(ctx).null_path
    stored = read_null(path)
    new = [read_null(_parts(ctx.root) / f"{seed}.csv") for seed in sorted(seeds)]
    merged = pd.concat([stored[~stored["permutation"].isin(seeds)], *new], ignore_index=True)
    atomic_write_text(path, merged.to_csv(index=False))  # the table holds every merged seed or none
    for seed in seeds:
        (_parts(ctx.root) / f"{seed}.csv").unlink(missing_ok=True)


def ray_models(ctx: StudyContext, tokens: list[str] | None, force: bool, timings: Timings) -> None:
    """Every model and permutation as one Ray task with declared resources; waits for all."""
    runtime = ctx.study.runtime
    ray = _ray(runtime.ray_address)
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    tasks = _ray_tasks(ctx, tokens, force)
    if not tasks:
        ctx.log("ray: every selected model and permutation already done")
        return
    remote = ray.remote(run_task)
    options = {"ray_cnn": runtime.ray_cnn.options(gpus), "ray_linear": runtime.ray_linear.options(gpus)}
    refs = {remote.options(**options[res], max_retries=runtime.ray_max_retries, retry_exceptions=False,
                           name=_task_name(kind, payload)).remote(
                str(ctx.study.source), str(ctx.root), kind, payload, force, tokens): (kind, payload)
            for kind, payload, res in tasks}
    ctx.log(f"ray: {len(refs)} task(s) on {ray.cluster_resources().get('CPU', 0):.0f} CPU(s), {gpus:.0f} GPU(s) "
            f"(cnn {options['ray_cnn']}, linear {options['ray_linear']})")
    with timings.timed("ray"):
        _gather(ray, refs, ctx.log)
    _merge_permutations(ctx, [p for k, p in refs.values() if k == "linear_permutation"])


def _gather(ray: Any, refs: dict[Any, tuple[str, Any]], log: Callable[[str], None]) -> None:
    """Wait for every task, logging each as it finishes; the first error cancels the rest and is raised."""
    pending, n = list(refs), 0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            result = ray.get(ready[0])
            n += 1
            kind, payload = refs[ready[0]]
            took = (f"trained in {result['train_seconds']:.1f} s" if isinstance(result, dict)
                    else "already done" if result is None else f"{result:.1f} s")
            log(f"  ray [{n}/{len(refs)}] {_task_name(kind, payload)}: {took}")
    except BaseException as exc:
        for ref in pending:
            ray.cancel(ref, force=True)
        cause = getattr(exc, "cause", None)  # a RayTaskError wraps the task's own exception
        if isinstance(cause, MonaiEmotionError):
            raise cause from None  # the user's error as the local executor raises it, not Ray's wrapper
        raise
