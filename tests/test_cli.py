"""Tests for cli.py: the environment the scripts give TensorFlow."""

import os
import subprocess
import sys

import cli


def test_scripts_choose_the_bfc_cpu_allocator_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
    monkeypatch.delenv("TF_CPU_BFC_MEM_LIMIT_IN_MB", raising=False)
    cli.prepare_tensorflow_environment()
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    # The allocator's cap is the machine's memory: MemTotal (kB) as the kernel reports it.
    with open("/proc/meminfo") as meminfo:
        total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    assert abs(int(os.environ["TF_CPU_BFC_MEM_LIMIT_IN_MB"]) - total_kb / 1024) <= 1
    # What the user set stays.
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "false")
    monkeypatch.setenv("TF_CPU_BFC_MEM_LIMIT_IN_MB", "1234")
    cli.prepare_tensorflow_environment()
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "false"
    assert os.environ["TF_CPU_BFC_MEM_LIMIT_IN_MB"] == "1234"


def test_scripts_turn_on_onednn_kernels_unless_the_user_chose(monkeypatch):
    for name in cli.tensorflow_environment():  # restored after the test
        monkeypatch.delenv(name, raising=False)
    cli.prepare_tensorflow_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    cli.prepare_tensorflow_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    # And TensorFlow, loaded by the scripts' import, runs its oneDNN kernels (on a CPU
    # without such instructions as AVX512-VNNI, AVX512-BF16 or AMX it would not by itself).
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    code = (
        "import cli; cli.import_tensorflow([]); "
        "from tensorflow.python.util import _pywrap_util_port; "
        "print(_pywrap_util_port.IsMklEnabled())"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True"], done.stdout + done.stderr[-2000:]
