"""What the command-line scripts share: a TensorFlow import that prints nothing, and a
test for the processes whose stale temporary files a new run may remove.

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


def import_tensorflow(argv: Sequence[str] = sys.argv):
    """Imports TensorFlow quietly (see the module docstring); returns the module."""
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
