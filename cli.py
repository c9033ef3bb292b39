"""What the command-line scripts share: a TensorFlow import that prints nothing and sets
TensorFlow's environment up, and a test for the processes whose stale temporary files a
new run may remove.

Importing TensorFlow writes C++ log lines to stderr before any Python logging is set up
("All log messages before absl::InitializeLog() ...", CPU-feature and oneDNN notices);
TF_CPP_MIN_LOG_LEVEL does not reach all of them on every machine. `import_tensorflow`
imports it with file descriptor 2 redirected, then replays only lines that are not
such notices (real errors still show), unless the command line asks for --verbosity.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Sequence

# Lines TensorFlow prints at import on a healthy machine.
_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cpu_feature_guard|"
    r"rebuild TensorFlow with the appropriate compiler flags|oneDNN custom operations|"
    r"TF_ENABLE_ONEDNN_OPTS|Could not find cuda drivers|Unable to register cu(DNN|FFT|BLAS)|"
    r"computation placer already registered|TensorFlow binary is optimized|"
    r"successful NUMA node read|cuda_executor|failed call to cuInit|Attempting to register"
)


def wants_verbose(argv: Sequence[str]) -> bool:
    """Whether the command line asks for TensorFlow's own logging (-v / --verbosity)."""
    return any(arg.startswith(("--verbosity", "-v")) for arg in argv[1:])


def tensorflow_environment() -> dict[str, str]:
    """Environment variables TensorFlow reads when it loads, as the scripts set them.

    TF_CPU_ALLOCATOR_USE_BFC: TensorFlow's default CPU allocator hands every large buffer
    back to the system when it is freed, so each XLA step maps its multi-GB scratch buffer
    afresh and page-faults all of it in again (310,000 faults and 1 s of kernel time a
    step at BERT-small on 2 cores); the BFC allocator keeps the memory it grew to and
    reuses it (300 faults a step; the step 1.1-1.2× as fast). Its own cap, 64 GB unless
    TF_CPU_BFC_MEM_LIMIT_IN_MB says otherwise, is raised to the machine's memory.

    TF_ENABLE_ONEDNN_OPTS=1: TensorFlow's oneDNN kernels (matmuls, fused matmul + bias,
    batched matmuls) for the operations XLA does not compile. TensorFlow turns them on by
    itself only on CPUs with such instructions as AVX512-VNNI, AVX512-BF16 or AMX: off on
    a 2-core AMD EPYC (AVX2), where turned on they made the uncompiled BERT-small step
    1.21× as fast (the XLA step: the same within noise; BENCHMARKS.md, "oneDNN's kernels
    on every x86 CPU").
    """
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return {
        "TF_CPU_ALLOCATOR_USE_BFC": "true",
        "TF_CPU_BFC_MEM_LIMIT_IN_MB": str(memory_mb),
        "TF_ENABLE_ONEDNN_OPTS": "1",
    }


def prepare_tensorflow_environment() -> None:
    """Sets the variables of `tensorflow_environment` that the user has not set.

    Call it before TensorFlow loads (`import_tensorflow` does).
    """
    for name, value in tensorflow_environment().items():
        os.environ.setdefault(name, value)


def import_tensorflow(argv: Sequence[str] = sys.argv):
    """Imports TensorFlow quietly (see the module docstring); returns the module."""
    prepare_tensorflow_environment()
    if wants_verbose(argv):
        import tensorflow

        return tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", errors="replace")
    kept = [line for line in text.splitlines() if line.strip() and not _STARTUP_NOISE.search(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)
    return tensorflow


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a stale temporary file's owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True
