"""Does TensorFlow see a GPU, and do its matmuls compute the right thing there?

    python benchmarks/gpu/probe.py          # --cpu: the same checks on the CPU

Prints the GPU, TensorFlow's CUDA build, then for fp32, bf16 and fp16 the relative error
‖C − C_ref‖ / ‖C_ref‖ of a GPU matmul of random matrices against NumPy in float64, and
the same for one XLA-compiled matmul + GELU. Exits 1 when there is no GPU or an error is
beyond what the precision allows (ERROR_BOUND): tight enough that a product run in a
lower precision than asked (fp16 or TF32 as bf16) fails.
"""

import math
import sys

import numpy as np
import tensorflow as tf

# Unit roundoff u of the operands each precision multiplies (TF32, which TensorFlow uses
# for fp32 matmuls on Ampere and later GPUs, keeps a 10-bit mantissa, as fp16 does).
OPERAND_ROUNDOFF = {"float32": 2.0**-11, "bfloat16": 2.0**-8, "float16": 2.0**-11}
# Rounding each operand to nearest perturbs it by a relative error spread evenly in
# [-u, u] (rms u/√3); each entry of C = A·B sums 512 products of random sign, so those
# errors add in quadrature like the entries themselves: ‖ΔC‖/‖C‖ ≈ √(2/3)·u ≈ 0.8u from
# the two operands, and the rounding of C to the output dtype adds u/√3 in quadrature:
# about 1u in all (the float32 accumulation is ~1e-7, negligible). 3u leaves a factor 3,
# and stays under the 0.8 × 2^-8 = 3e-3 a product rounded to bf16 would show.
ERROR_BOUND = 3.0


def relative_error(result, reference) -> float:
    result = np.asarray(result, np.float64)
    return float(np.linalg.norm(result - reference) / np.linalg.norm(reference))


def within(label: str, error: float, bound: float) -> bool:
    """Prints one check's line; True when `error` is finite and under `bound`."""
    good = bool(np.isfinite(error) and error < bound)
    print(f"{label}: relative error {error:.2e} (bound {bound:.1e}){'' if good else '  WRONG'}")
    return good


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
            product = tf.matmul(tf.constant(a, dtype), tf.constant(b, dtype))
            error = relative_error(tf.cast(product, tf.float64), a @ b)
            ok &= within(f"matmul {dtype}", error, ERROR_BOUND * roundoff)
        compiled = tf.function(lambda x, y: tf.nn.gelu(tf.matmul(x, y)), jit_compile=True)
        result = compiled(tf.constant(a, tf.float32), tf.constant(b, tf.float32))
        product = a @ b
        reference = 0.5 * product * (1 + np.vectorize(math.erf)(product / 2**0.5))
        error = relative_error(result, reference)
        # GELU's slope is at most about 1.13, so it passes the product's error on.
        ok &= within("xla matmul+gelu float32", error, ERROR_BOUND * OPERAND_ROUNDOFF["float32"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
