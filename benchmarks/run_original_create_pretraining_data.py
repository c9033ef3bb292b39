"""Runs the original BERT release's create_pretraining_data.py under TensorFlow 2.

    python benchmarks/run_original_create_pretraining_data.py --original_dir=DIR -- \
        --input_file=... --output_file=... --vocab_file=... [its other flags]

DIR is a checkout of google-research/bert (its create_pretraining_data.py and
tokenization.py are used, unchanged; nothing of it is copied here). The original is TF1
code: it reads `tf.flags`, `tf.logging`, `tf.gfile`, `tf.python_io` and `tf.app`, which
TensorFlow 2 keeps under `tf.compat.v1`. This shim makes `import tensorflow as tf`
resolve to `tensorflow.compat.v1` for the original's modules and runs its script as
`__main__`, so the benchmark measures the original's own code.
"""

import argparse
import os
import runpy
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original_dir", required=True, help="a google-research/bert checkout")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="the original's flags, after --")
    args = parser.parse_args()
    script = os.path.join(args.original_dir, "create_pretraining_data.py")
    for needed in (script, os.path.join(args.original_dir, "tokenization.py")):
        if not os.path.isfile(needed):
            sys.exit(f"--original_dir={args.original_dir}: no {os.path.basename(needed)} there")
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags

    import tensorflow as tf

    sys.modules["tensorflow"] = tf.compat.v1  # the original's `import tensorflow as tf`
    sys.path.insert(0, os.path.abspath(args.original_dir))  # its own tokenization.py
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
