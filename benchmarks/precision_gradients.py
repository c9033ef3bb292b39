"""How far the mixed-precision gradients are from the float32 ones, variable group by group.

    python benchmarks/precision_gradients.py --config=mini --precisions=bf16,fp16

Builds one BERT (dropout off) with random initial weights, computes the gradient of the
pretraining loss of one synthetic batch (bench_training.py's) in float32 without XLA, then
the same weights' gradient under each mixed precision, each way the backward pass can sum
bias and LayerNorm gradients (`modeling.COLUMN_SUMS`), with and without XLA, and as the
code before float32 bias sums did (`keras`: Keras's own dense layer, whose bias gradient
is TensorFlow's `BiasAddGrad`, and the joint query/key/value bias added by `+`). For each
group of variables it prints the median and the largest relative error
||g - g_fp32|| / ||g_fp32|| over the group's variables. Rounding of the products and
activations alone puts every group near the half type's unit roundoff times a small factor
(2⁻⁸ = 0.0039 for bfloat16); a group far above the others sums in the half type somewhere.
The key projection's bias is left out: its exact gradient is zero (softmax does not change
when every score of a query moves by the same amount), so its relative error means nothing.

On a GPU (`--device=gpu`) it checks the paths a GPU runs (XLA on by default there); the
float32 reference runs without TF32 there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the model

import bench_training  # noqa: E402  (this directory; TensorFlow is imported later)

# Groups of variables, by original checkpoint name (modeling.original_name_map).
GROUPS = (
    ("embedding tables", lambda n: n.startswith("bert/embeddings/") and "LayerNorm" not in n),
    ("dense kernels", lambda n: n.endswith(("/kernel", "/output_weights"))),
    ("dense biases", lambda n: n.endswith("/bias") and not n.endswith("/output_bias")),
    ("LayerNorm scale, offset", lambda n: n.endswith(("/gamma", "/beta"))),
    ("output biases (float32 logits)", lambda n: n.endswith("/output_bias")),
)
LOSS_SCALE = {"fp32": 1.0, "bf16": 1.0, "fp16": 1024.0}  # float16 gradients underflow unscaled


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    import modeling
    import training

    if args.device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    tf.config.experimental.enable_tensor_float_32_execution(False)  # a float32 reference
    keras.utils.set_random_seed(args.seed)  # the initial weights
    config = bench_training.bert_config_of(
        bench_training.CONFIGS[args.config],
        args.vocab_size,
        max_position_embeddings=max(512, args.seq_length),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    features = bench_training.synthetic_batch(
        args.batch_size, args.seq_length, args.predictions, args.vocab_size, "realistic", 0
    )
    batch = {name: tf.constant(value) for name, value in features.items()}
    weights = None

    def gradients(precision: str, column_sums: str, xla: bool) -> dict[str, np.ndarray]:
        nonlocal weights
        keras.config.set_dtype_policy(bench_training.KERAS_POLICY[precision])
        own = modeling.Dense.call, modeling.Dense.add_weight, modeling.add_bias
        if column_sums == "keras":  # TensorFlow's bias gradients, as before
            modeling.Dense.call = keras.layers.Dense.call
            modeling.Dense.add_weight = keras.layers.Dense.add_weight  # autocast biases
            modeling.add_bias = lambda x, bias, method: x + tf.cast(bias, x.dtype)
        try:
            model = modeling.BertPretrainingModel(
                config, column_sums="reduce" if column_sums == "keras" else column_sums
            )
            model.build_weights()
            names = modeling.original_name_map(model)
            if weights is None:
                weights = {name: v.numpy() for name, v in names.items()}
            for name, variable in names.items():
                variable.assign(weights[name])
            scale = LOSS_SCALE[precision]

            def grads():
                with tf.GradientTape() as tape:
                    sums = training.pretraining_sums(model, batch, training=False)
                    loss = training.global_loss(sums, sums["mlm_count"], sums["nsp_count"])
                    scaled = loss * scale
                found = tape.gradient(scaled, list(names.values()))
                return [tf.convert_to_tensor(g) / scale for g in found]

            values = tf.function(grads, jit_compile=xla)()
        finally:
            modeling.Dense.call, modeling.Dense.add_weight, modeling.add_bias = own
        return {name: value.numpy() for name, value in zip(names, values)}

    reference = gradients("fp32", "reduce", False)
    print(
        f"Relative error of each variable's gradient against float32 (no XLA), median / max "
        f"over the group; BERT-{args.config}, batch {args.batch_size}, sequence "
        f"{args.seq_length}, {args.predictions} predictions, vocabulary {args.vocab_size}, "
        f"on {args.device}, TensorFlow {tf.__version__}. The key bias is left out.\n"
    )
    print("| precision | column sums | XLA | " + " | ".join(g for g, _ in GROUPS) + " |")
    print("| --- | --- | --- |" + " ---: |" * len(GROUPS))
    for precision in args.precisions:
        for column_sums in args.column_sums:
            for xla in args.xla:
                found = gradients(precision, column_sums, xla)
                cells = []
                for _, member in GROUPS:
                    errors = [
                        float(np.linalg.norm(found[n] - r) / np.linalg.norm(r))
                        for n, r in reference.items()
                        if member(n) and "attention/self/key/bias" not in n
                    ]
                    cells.append(f"{statistics.median(errors):.2e} / {max(errors):.2e}")
                row = [precision, column_sums, "on" if xla else "off", *cells]
                print("| " + " | ".join(row) + " |", flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    add = parser.add_argument
    add("--config", choices=sorted(bench_training.CONFIGS), default="mini", help="model")
    add("--batch_size", type=int, default=32)
    add("--seq_length", type=int, default=128)
    add("--predictions", type=int, default=20)
    add("--vocab_size", type=int, default=30522)
    add(
        "--precisions",
        type=bench_training.names(("bf16", "fp16")),
        default="bf16",
        help="bf16 and/or fp16",
    )
    add(
        "--column_sums",
        type=bench_training.names(("keras", "reduce", "matmul")),
        default="keras,reduce,matmul",
        help="keras: Keras's own dense layer; reduce, matmul: modeling.COLUMN_SUMS",
    )
    add(
        "--xla",
        type=bench_training.names(("false", "true")),
        default="false,true",
        help="false and/or true",
    )
    add("--device", choices=bench_training.DEVICES, default="cpu")
    add("--seed", type=int, default=0, help="of the initial weights")
    args = parser.parse_args(argv)
    args.xla = [value == "true" for value in args.xla]
    return args


if __name__ == "__main__":
    main()
