"""Tests for cli.py: the environment the scripts give TensorFlow."""

import os

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
