"""Shared test set-up.

The CPU is split into two logical devices before anything else touches TensorFlow's
devices, so that tests can mirror a model over 2 replicas on a machine with no GPU —
the same MirroredStrategy code path a 2-GPU workstation runs.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

NUM_TEST_CPU_DEVICES = 2


def pytest_configure(config):
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_TEST_CPU_DEVICES
    )
