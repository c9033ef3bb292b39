"""Distribution strategies: the GPUs of one machine, logical CPU devices, several machines.

`make_strategy` turns the device flags into a `tf.distribute.MirroredStrategy` and a
sentence for the banner. Nothing else in the project decides where replicas run.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Devices:
    """The strategy of a run and how to describe it."""

    strategy: tf.distribute.Strategy
    description: str  # e.g. "4 replica(s), one per GPU: /gpu:0, ..." for the banner


def make_strategy(num_gpus: int | None = None, cpu_replicas: int = 0) -> Devices:
    """One replica per GPU, or per logical CPU device when `cpu_replicas` is set.

    Args:
        num_gpus: Replicas, one per GPU; None means every visible GPU (or one replica on
            the CPU when there is none); 0 means one replica on the CPU even when GPUs
            are visible.
        cpu_replicas: Split the CPU into this many logical devices and mirror over them
            (machines without a GPU; how the tests exercise multi-replica training).

    Raises:
        ValueError: if more GPUs are asked for than are visible, or the CPU cannot be
            split any more (TensorFlow already initialised its devices).
    """
    gpus = tf.config.list_physical_devices("GPU")
    if cpu_replicas:
        (cpu,) = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
            )
        except RuntimeError:
            pass  # devices already initialized (e.g. by a test harness): use what exists
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) < cpu_replicas:
            raise ValueError(
                f"--cpu_replicas={cpu_replicas}, but TensorFlow was already initialized with "
                f"{len(cpus)} logical CPU device(s) in this process"
            )
        devices = [d.name for d in cpus[:cpu_replicas]]
        description = f"{cpu_replicas} replica(s) on logical CPU devices"
    elif num_gpus == 0:
        devices = ["/cpu:0"]
        description = "1 replica on the CPU (--num_gpus=0)"
    elif gpus:
        wanted = num_gpus or len(gpus)
        if wanted > len(gpus):
            raise ValueError(
                f"--num_gpus={wanted}, but only {len(gpus)} GPU(s) are visible "
                f"({', '.join(g.name for g in gpus)}); use --num_gpus={len(gpus)} or fewer, "
                "or --num_gpus=0 / --cpu_replicas=K to train on the CPU"
            )
        devices = [f"/gpu:{i}" for i in range(wanted)]
        description = f"{wanted} replica(s), one per GPU"
    else:
        if num_gpus:
            raise ValueError(
                f"--num_gpus={num_gpus}, but no GPU is visible to TensorFlow; to train on the "
                "CPU instead, pass --num_gpus=0 (one replica) or --cpu_replicas=K (K replicas "
                "on K logical CPU devices)"
            )
        devices = ["/cpu:0"]
        description = "1 replica on the CPU (no GPU is visible)"
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    return Devices(strategy, f"{description}: {', '.join(devices)}")
