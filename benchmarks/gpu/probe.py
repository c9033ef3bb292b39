"""Does TensorFlow see a GPU, and do its matmuls compute the right thing there?

    python benchmarks/gpu/probe.py          # --cpu: the same checks on the CPU

Prints the GPU, TensorFlow's CUDA build, then for fp32, bf16 and fp16 the relative error
‖C − C_ref‖ / ‖C_ref‖ of a GPU matmul of random matrices against NumPy in float64, and
the same for one XLA-compiled matmul + GELU. Exits 1 when there is no GPU or an error is
beyond what the precision allows: the operands' rounding (2^-8 for bf16, 2^-11 for fp16,
2^-11 for fp32 matmuls run as TF32) times a few, for sums of 512 products.
"""

import math
import sys

import numpy as np
import tensorflow as tf

# Unit roundoff of the operands each precision multiplies (TF32 keeps a 10-bit mantissa).
OPERAND_ROUNDOFF = {"float32": 2.0**-11, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def relative_error(result, reference) -> float:
    result = np.asarray(result, np.float64)
    return float(np.linalg.norm(result - reference) / np.linalg.norm(reference))


def main(argv: list[str]) -> int:
    device = "/cpu:0" if argv == ["--cpu"] else "/gpu:0"
    info = tf.sysconfig.get_build_info()
    print(
        f"probe: TensorFlow {tf.__version__}, CUDA {info.get('cuda_version')}, "
        f"cuDNN {info.get('cudnn_version')}"
    )
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and device == "/gpu:0":
        print("probe: TensorFlow sees no GPU")
        return 1
    details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
    print(
        f"GPU: {details.get('device_name')} compute capability {details.get('compute_capability')}"
    )
    rng = np.random.default_rng(7)
    a = rng.standard_normal((512, 512))
    b = rng.standard_normal((512, 512))
    ok = True
    with tf.device(device):
        for dtype, roundoff in OPERAND_ROUNDOFF.items():
            # Reference of the rounded operands' exact product, and of the unrounded: the
            # first bounds the accumulation, the second adds the operands' rounding.
            product = tf.matmul(tf.constant(a, dtype), tf.constant(b, dtype))
            error = relative_error(tf.cast(product, tf.float64), a @ b)
            # Two operands rounded to relative `roundoff` each, plus the rounding of the
            # output: relative error about 3 × roundoff; 8 × leaves room for accumulation.
            good = np.isfinite(error) and error < 8 * roundoff
            ok &= good
            print(
                f"matmul {dtype}: relative error {error:.2e} (bound {8 * roundoff:.1e})"
                f"{'' if good else '  WRONG'}"
            )
        compiled = tf.function(lambda x, y: tf.nn.gelu(tf.matmul(x, y)), jit_compile=True)
        result = compiled(tf.constant(a, tf.float32), tf.constant(b, tf.float32))
        product = a @ b
        reference = 0.5 * product * (1 + np.vectorize(math.erf)(product / 2**0.5))
        error = relative_error(result, reference)
        good = np.isfinite(error) and error < 8 * OPERAND_ROUNDOFF["float32"]
        ok &= good
        print(f"xla matmul+gelu float32: relative error {error:.2e}{'' if good else '  WRONG'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
