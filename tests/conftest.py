"""Shared test set-up.

The CPU is split into two logical devices before anything else touches TensorFlow's
devices, so that tests can mirror a model over 2 replicas on a machine with no GPU —
the same MirroredStrategy code path a 2-GPU workstation runs.
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The kernels the scripts run (cli.tensorflow_environment), on every x86 CPU: without it
# TensorFlow picks oneDNN's kernels by the CPU, and the tests would run other kernels
# than the scripts on CPUs without such instructions as AVX512-VNNI, AVX512-BF16 or AMX.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

NUM_TEST_CPU_DEVICES = 2


def pytest_configure(config):
    # The stop tests send SIGINT as a terminal's Ctrl-C does. A test run started in the
    # background by a non-interactive shell (`make test &`, a CI wrapper) inherits SIGINT
    # ignored, and an ignored signal stays ignored across exec: Python would not install
    # its KeyboardInterrupt handler and bash cannot trap a signal ignored at entry, so
    # the programs under test would not stop. A Python handler, unlike SIG_IGN, reverts
    # to the default in every child at exec: the children start as from a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_TEST_CPU_DEVICES
    )


_STRATEGIES = {}


def mirrored_strategy(num_replicas: int):
    """One MirroredStrategy per replica count for the whole test process.

    Strategies over the same devices share collective-op keys; a second strategy made
    after the first has run collectives can collide with the first's cached instances
    ("Shape mismatch in the collective instance ..."). A training process makes one
    strategy; the tests share one per device set to behave the same way.
    """
    import tensorflow as tf

    if num_replicas not in _STRATEGIES:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")[:num_replicas]]
        assert len(devices) == num_replicas, devices
        _STRATEGIES[num_replicas] = tf.distribute.MirroredStrategy(devices=devices)
    return _STRATEGIES[num_replicas]
