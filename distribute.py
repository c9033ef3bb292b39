"""Distribution strategies: the GPUs of one machine, logical CPU devices, several machines.

`make_strategy` turns the device flags (and the cluster of TF_CONFIG, or of
--worker_hosts/--task_index) into a `tf.distribute` strategy and a sentence for the
banner: MirroredStrategy on one machine, MultiWorkerMirroredStrategy on several.
Nothing else in the project decides where replicas run.

Also here: what several workers must agree on or exchange outside the training step
(a stop request, the checkpoint step they see, the input positions of their data
shards, which are gathered into the chief's checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import struct
import tempfile

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Devices:
    """The strategy of a run, how to describe it, and the worker's place in the cluster.

    Attributes:
        strategy: MirroredStrategy (one machine) or MultiWorkerMirroredStrategy.
        description: e.g. "4 replica(s), one per GPU: /gpu:0, ..." for the banner.
        num_workers: machines (processes) in the cluster; 1 without one.
        worker_index: this worker's index; 0 is the chief.
        worker_addresses: host:port of every worker, in index order (empty on one machine).
    """

    strategy: tf.distribute.Strategy
    description: str
    num_workers: int = 1
    worker_index: int = 0
    worker_addresses: tuple[str, ...] = ()

    @property
    def is_chief(self) -> bool:
        """The worker that writes checkpoints, summaries and results (worker 0)."""
        return self.worker_index == 0

    def worker_name(self, index: int) -> str:
        address = self.worker_addresses[index] if index < len(self.worker_addresses) else "?"
        return f"worker {index} ({address})"


def cluster_from_flags(worker_hosts: str | None, task_index: int | None) -> dict | None:
    """The cluster of this run: TF_CONFIG's, or the one --worker_hosts/--task_index give.

    Returns:
        {"workers": [host:port, ...], "index": i}, or None for a single machine.

    Raises:
        ValueError: for an invalid TF_CONFIG or flags, or both disagreeing.
    """
    from_flags = None
    if worker_hosts or task_index is not None:
        hosts = [h.strip() for h in (worker_hosts or "").split(",") if h.strip()]
        if not hosts or task_index is None:
            raise ValueError(
                "--worker_hosts and --task_index go together: e.g. --worker_hosts="
                "host1:2222,host2:2222 --task_index=0 on host1 and --task_index=1 on host2"
            )
        bad = [h for h in hosts if not re.fullmatch(r"[^:\s]+:\d+", h)]
        if bad:
            raise ValueError(f"--worker_hosts: expected host:port entries, got {', '.join(bad)}")
        if not 0 <= task_index < len(hosts):
            raise ValueError(
                f"--task_index={task_index}: expected 0 to {len(hosts) - 1} "
                f"(--worker_hosts names {len(hosts)} worker(s))"
            )
        from_flags = {"workers": hosts, "index": task_index}
    text = os.environ.get("TF_CONFIG", "").strip()
    from_env = None
    if text:
        try:
            config = json.loads(text)
            workers = list(config["cluster"]["worker"])
            task = config["task"]
            index = int(task["index"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"TF_CONFIG is not a valid cluster description ({e!r}); expected e.g. "
                '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": '
                '"worker", "index": 0}}'
            ) from None
        if set(config["cluster"]) - {"worker"} or task.get("type", "worker") != "worker":
            raise ValueError(
                "TF_CONFIG: only clusters of 'worker' tasks are supported (worker 0 is the "
                f"chief); got jobs {sorted(config['cluster'])}, task type {task.get('type')!r}"
            )
        if not 0 <= index < len(workers):
            raise ValueError(
                f"TF_CONFIG: task index {index} is not one of the {len(workers)} workers"
            )
        from_env = {"workers": workers, "index": index}
    if from_flags and from_env and from_flags != from_env:
        raise ValueError(
            f"TF_CONFIG ({from_env}) and --worker_hosts/--task_index ({from_flags}) disagree: "
            "give one of them"
        )
    cluster = from_flags or from_env
    if cluster and len(cluster["workers"]) == 1:
        return None  # a cluster of one is one machine
    return cluster


def _local_devices(num_gpus: int | None, cpu_replicas: int) -> tuple[list[str], str]:
    """This machine's replica devices and how to say so."""
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
        return [f"/cpu:{i}" for i in range(cpu_replicas)], (
            f"{cpu_replicas} replica(s) on logical CPU devices"
        )
    if num_gpus == 0:
        return ["/cpu:0"], "1 replica on the CPU (--num_gpus=0)"
    if gpus:
        wanted = num_gpus or len(gpus)
        if wanted > len(gpus):
            raise ValueError(
                f"--num_gpus={wanted}, but only {len(gpus)} GPU(s) are visible "
                f"({', '.join(g.name for g in gpus)}); use --num_gpus={len(gpus)} or fewer, "
                "or --num_gpus=0 / --cpu_replicas=K to train on the CPU"
            )
        return [f"/gpu:{i}" for i in range(wanted)], f"{wanted} replica(s), one per GPU"
    if num_gpus:
        raise ValueError(
            f"--num_gpus={num_gpus}, but no GPU is visible to TensorFlow; to train on the "
            "CPU instead, pass --num_gpus=0 (one replica) or --cpu_replicas=K (K replicas "
            "on K logical CPU devices)"
        )
    return ["/cpu:0"], "1 replica on the CPU (no GPU is visible)"


def make_strategy(
    num_gpus: int | None = None,
    cpu_replicas: int = 0,
    worker_hosts: str | None = None,
    task_index: int | None = None,
) -> Devices:
    """One replica per GPU (or logical CPU device) of this machine, on every worker.

    Args:
        num_gpus: Replicas, one per GPU; None means every visible GPU (or one replica on
            the CPU when there is none); 0 means one replica on the CPU even when GPUs
            are visible. On several workers every worker uses all its GPUs.
        cpu_replicas: Split the CPU into this many logical devices and mirror over them
            (machines without a GPU; how the tests exercise multi-replica training).
        worker_hosts, task_index: The cluster, when TF_CONFIG does not give it.

    Raises:
        ValueError: if more GPUs are asked for than are visible, the CPU cannot be split
            any more, or the cluster description is invalid.
    """
    cluster = cluster_from_flags(worker_hosts, task_index)
    if cluster is None:
        devices, description = _local_devices(num_gpus, cpu_replicas)
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return Devices(strategy, f"{description}: {', '.join(devices)}")
    if num_gpus is not None and num_gpus > 0:
        raise ValueError(
            "--num_gpus: on several workers every worker trains on all its visible GPUs "
            "(limit them with CUDA_VISIBLE_DEVICES); drop the flag"
        )
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": cluster["workers"]},
            "task": {"type": "worker", "index": cluster["index"]},
        }
    )
    # Nothing may initialise TensorFlow's runtime before the strategy configures its
    # collectives: only configure devices here, list none.
    if cpu_replicas:
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
        )
        _use_logical_cpus(cpu_replicas)
        description = f"{cpu_replicas} replica(s) on logical CPU devices"
    elif tf.config.list_physical_devices("GPU"):
        description = "one replica per GPU"
    else:
        description = "1 replica on the CPU (no GPU is visible)"
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    workers = len(cluster["workers"])
    replicas = strategy.num_replicas_in_sync
    return Devices(
        strategy,
        f"{workers} worker(s) × {replicas // workers} replica(s) = {replicas} replica(s); "
        f"this is worker {cluster['index']} ({cluster['workers'][cluster['index']]}): "
        f"{description}",
        num_workers=workers,
        worker_index=cluster["index"],
        worker_addresses=tuple(cluster["workers"]),
    )


def _use_logical_cpus(count: int) -> None:
    """Makes MultiWorkerMirroredStrategy mirror over `count` logical CPU devices per worker.

    The strategy uses every GPU of a worker but only one CPU device; for the tests of
    several workers with several replicas each on machines without a GPU, its choice of
    local devices is replaced. (A private hook of TensorFlow's: only --cpu_replicas uses
    it.)
    """
    from tensorflow.python.distribute import collective_all_reduce_strategy as strategy_module

    def local_devices(self, cluster_resolver, worker_device):
        return tuple(f"{worker_device}/device:CPU:{i}" for i in range(count)), "CPU"

    strategy_module.CollectiveAllReduceExtended._initialize_local_devices = local_devices


# ----------------------------------------------------------------------------------------
# What workers agree on between steps


_GATHER_FUNCTIONS: dict[int, tf.types.experimental.GenericFunction] = {}


def _gather_from_workers(devices: Devices, row: np.ndarray) -> np.ndarray:
    """Every worker's `row` (int32 [n], the same n everywhere), as [workers, n].

    Each worker puts its row in its own slot of a [workers, n] matrix of zeros and the
    matrices are summed across replicas (the first replica of each worker contributes,
    the others add zeros): an exact all-gather with the all-reduce that training uses.
    It runs in one `tf.function` kept per strategy (a new one per call would be traced
    again every time).
    """
    strategy = devices.strategy
    key = id(strategy)
    if key not in _GATHER_FUNCTIONS:
        local_replicas = len(strategy.extended.worker_devices)

        @tf.function(reduce_retracing=True)
        def summed(slots):
            def replica(slots):
                ctx = tf.distribute.get_replica_context()
                first = ctx.replica_id_in_sync_group % local_replicas == 0
                # tf.where makes the value here, on this replica's device: an all-reduce
                # of a tensor from outside the replica has no device to reduce to.
                local = tf.where(first, slots, tf.zeros_like(slots))
                return ctx.all_reduce("sum", local)

            return strategy.run(replica, args=(slots,))

        _GATHER_FUNCTIONS[key] = summed
    slots = np.zeros((devices.num_workers, len(row)), np.int32)
    slots[devices.worker_index] = row
    result = _GATHER_FUNCTIONS[key](tf.constant(slots))
    return strategy.experimental_local_results(result)[0].numpy()


def agree_on_max(devices: Devices, value: int) -> int:
    """The largest of every worker's `value` (each worker passes its own int32)."""
    if devices.num_workers == 1:
        return value
    return int(_gather_from_workers(devices, np.array([value], np.int32)).max())


def agree_on_min(devices: Devices, value: int) -> int:
    """The smallest of every worker's `value`."""
    return -agree_on_max(devices, -value)


def worker_of_error(message: str, devices: Devices) -> str | None:
    """The worker a collective error names ("/job:worker/replica:0/task:1"), described."""
    match = re.search(r"/job:worker/(?:replica:\d+/)?task:(\d+)", message)
    if not match or not devices.worker_addresses:
        return None
    return devices.worker_name(int(match.group(1)))


# ----------------------------------------------------------------------------------------
# Input positions: serialized, gathered into the chief's checkpoint, restored per worker


def iterator_state(iterator) -> bytes:
    """The position of a tf.data iterator, as bytes (a one-object checkpoint, packed)."""
    directory = tempfile.mkdtemp(prefix="bert-gpu-data-state-")
    try:
        prefix = tf.train.Checkpoint(data=iterator).write(os.path.join(directory, "state"))
        parts = []
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), "rb") as f:
                parts.append((name, f.read()))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    del prefix
    header = json.dumps([(name, len(data)) for name, data in parts]).encode()
    return struct.pack("<I", len(header)) + header + b"".join(data for _, data in parts)


def restore_iterator_state(iterator, state: bytes) -> None:
    """Moves `iterator` to the position `iterator_state` recorded."""
    (header_length,) = struct.unpack_from("<I", state)
    header = json.loads(state[4 : 4 + header_length])
    directory = tempfile.mkdtemp(prefix="bert-gpu-data-state-")
    try:
        offset = 4 + header_length
        for name, length in header:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(state[offset : offset + length])
            offset += length
        tf.train.Checkpoint(data=iterator).read(os.path.join(directory, "state")).assert_consumed()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def gather_bytes(devices: Devices, local: bytes) -> list[bytes]:
    """Every worker's `local` bytes, in worker order, on every worker (an all-gather)."""
    if devices.num_workers == 1:
        return [local]
    words = -(-agree_on_max(devices, len(local)) // 4)
    padded = np.frombuffer(local.ljust(words * 4, b"\0"), dtype=np.int32)
    rows = _gather_from_workers(devices, np.concatenate([[len(local)], padded]))
    return [row[1:].tobytes()[: row[0]] for row in rows]
