"""The study's ``runtime`` section: how a study runs (threads, executor, tracking), never what it computes.

No key here enters a model digest or a stage's settings record: a study run locally and the
same study run on a Ray cluster share their finished models (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from monai_emotion.errors import ConfigError
from monai_emotion.study.settings import _choice, _flag, _integer, _number, _Section, text

__all__ = ["EXECUTORS", "RayResources", "RuntimeSettings"]

#: how a study's models are run: one after another here, or one Ray task each
EXECUTORS: tuple[str, ...] = ("local", "ray")


@dataclass(frozen=True)
class RayResources(_Section):
    """What one Ray task declares (``ray.remote`` options): CPUs, GPUs (fractions share one
    GPU between several small models), memory in bytes (``None``: not declared).

    ``num_gpus`` ``None`` (the CNN default) means one GPU when the cluster has any, else none.
    """

    num_cpus: float = 1.0
    num_gpus: float | None = 0.0
    memory: int | None = None

    def __post_init__(self) -> None:
        self._set("num_cpus", _number("num_cpus", self.num_cpus, minimum=0.0))
        if self.num_gpus is not None:
            self._set("num_gpus", _number("num_gpus", self.num_gpus, minimum=0.0))
        if self.memory is not None:
            self._set("memory", _integer("memory", self.memory, 1))

    @classmethod
    def parse(cls, name: str, value: Any, default: RayResources) -> RayResources:
        """``value`` (a resources object, or the section already typed) under key ``name``."""
        if isinstance(value, RayResources):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"runtime.{name} must be an object, got {value!r}",
                              fix='e.g. {"num_cpus": 1, "num_gpus": 0.25, "memory": 4000000000}')
        unknown = sorted(set(value) - {"num_cpus", "num_gpus", "memory"})
        if unknown:
            raise ConfigError(f"unknown key(s) runtime.{name}.{unknown}", fix="use num_cpus, num_gpus, memory")
        return cls(**{**default.to_dict(), **value})

    def options(self, cluster_gpus: float) -> dict[str, Any]:
        """The ``ray.remote`` options of this task on a cluster with ``cluster_gpus`` GPUs."""
        gpus = self.num_gpus if self.num_gpus is not None else (1.0 if cluster_gpus > 0 else 0.0)
        out: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": gpus}
        if self.memory is not None:
            out["memory"] = self.memory
        return out


#: a CNN task: one CPU and, where the cluster has GPUs, one GPU
CNN_RESOURCES = RayResources(num_cpus=1.0, num_gpus=None)
#: a linear, permutation or other CPU task: one CPU
LINEAR_RESOURCES = RayResources(num_cpus=1.0, num_gpus=0.0)


@dataclass(frozen=True)
class RuntimeSettings(_Section):
    """``runtime``: torch intra-op threads of this process (1 is fastest on small, shared CPUs; see
    docs/performance.md); ``parallel_baseline``: fit the linear baseline and its permutations in
    a second process while the CNNs train (each side uses one core); ``mlflow``: track every CNN
    training in MLflow (bundle configs/mlflow.json: experiment = study name, run = model id, tags
    ``study`` and ``model``) into ``mlflow_uri`` (default: ``mlruns.db`` beside the models).

    ``executor``: ``"local"`` (this process, as above) or ``"ray"``: every CNN model, linear model
    and linear permutation is one Ray task declaring ``ray_cnn`` / ``ray_linear`` resources, on
    the cluster at ``ray_address`` (``None``: a cluster of this machine; ``"auto"``: the one
    ``ray start`` made here; ``"ray://host:10001"``: a remote one); a task whose worker dies is
    retried up to ``ray_max_retries`` times (docs/scaling.md)."""

    threads: int = 1
    parallel_baseline: bool = True
    mlflow: bool = False
    mlflow_uri: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    ray_cnn: RayResources = field(default_factory=lambda: CNN_RESOURCES)
    ray_linear: RayResources = field(default_factory=lambda: LINEAR_RESOURCES)
    ray_max_retries: int = 3

    def __post_init__(self) -> None:
        self._set("threads", _integer("threads", self.threads, 1))
        self._set("parallel_baseline", _flag("parallel_baseline", self.parallel_baseline))
        self._set("mlflow", _flag("mlflow", self.mlflow))
        self._set("mlflow_uri", text("mlflow_uri", self.mlflow_uri))
        self._set("executor", _choice("executor", self.executor, EXECUTORS))
        self._set("ray_address", text("ray_address", self.ray_address))
        self._set("ray_cnn", RayResources.parse("ray_cnn", self.ray_cnn, CNN_RESOURCES))
        self._set("ray_linear", RayResources.parse("ray_linear", self.ray_linear, LINEAR_RESOURCES))
        self._set("ray_max_retries", _integer("ray_max_retries", self.ray_max_retries, 0))
