"""Matmul FLOPs of one BERT pretraining step, counted GEMM by GEMM.

Convention (the one behind "model FLOPs utilisation" figures):

- A GEMM of an [m, k] by a [k, n] matrix costs 2·m·n·k FLOPs (one multiply and one add
  per term). Only matrix products are counted: embedding lookups (gathers), softmax,
  LayerNorm, GELU, dropout, the loss and the optimizer update are left out; for BERT
  they are a few percent of the work.
- A training step costs 3 × its forward pass: the backward pass computes, for every
  forward GEMM, the gradient with respect to its input and with respect to its weights,
  two GEMMs of the same size. This is the "6N FLOPs per token" rule of Kaplan et al.
  (2020), "Scaling laws for neural language models", section 2.1 (forward 2N, backward
  4N for N parameters), extended as in Narayanan et al. (2021), "Efficient large-scale
  language model training on GPU clusters using Megatron-LM", appendix, to the attention
  GEMMs (Q·Kᵀ and probabilities·V), which have no parameters.

Legend as in modeling.py: B batch, S sequence length, H hidden size, I intermediate
size, P masked positions per sequence, V vocabulary size, L layers. The number of heads
does not change the count: N heads of size D = H / N do B·N·S·S·D = B·S·S·H
multiply-adds for the scores.
"""

from __future__ import annotations


def forward_flops(
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    vocab_size: int,
    batch_size: int,
    seq_length: int,
    predictions: int,
    next_sentence_head: bool = True,
    last_layer_rows: int | None = None,
    packed_tokens: int | None = None,
) -> dict[str, int]:
    """Forward-pass matmul FLOPs of BERT with its pretraining heads, by part.

    The masked-LM head works on the P masked positions only (gathered before the
    transform), as in the original release, bert-gpu and keras-hub. The pooler is in
    both bert-gpu's encoder and keras-hub's BertBackbone; the next-sentence head is in
    bert-gpu's model only (`next_sentence_head=False` for keras-hub's BertMaskedLM).

    Args:
        num_layers, hidden_size, intermediate_size, vocab_size: the model's L, H, I, V.
        batch_size, seq_length, predictions: the step's B, S and P.
        next_sentence_head: count the [B, H] × [H, 2] next-sentence GEMM.
        last_layer_rows: if given, R: the last layer computes its keys and values for
            all S positions but its queries, scores, context, output projection and
            feed-forward network for R positions per sequence only (bert-gpu's
            pretraining model: R = P + 1, the masked positions and the pooler's first
            token). None: all S, as keras-hub does.
        packed_tokens: if given, T: the projections and feed-forward networks work on T
            packed token rows instead of all B·S (bert-gpu's pretraining model without
            XLA: the real tokens, rounded up); the attention scores and context stay on
            the padded [B, S] layout. None: all B·S.

    Returns:
        FLOPs per part (Python ints, exact): "attention_projections" (Q, K, V and the
        output projection), "attention_scores" (Q·Kᵀ), "attention_context"
        (probabilities·V), "feed_forward" (the two FFN GEMMs), "pooler", "mlm_transform",
        "mlm_output" (the logits over the vocabulary) and, if asked, "next_sentence".

    Example, the "tiny" benchmark model (L 2, H 128, I 512), B 32, S 128, P 20, by hand:
    per layer 4·2·4096·128·128 = 536,870,912 for the projections, 2·2·32·128·128·128 =
    268,435,456 for scores and context, 2·2·4096·128·512 = 1,073,741,824 for the FFN;
    pooler 2·32·128·128 = 1,048,576; MLM transform 2·640·128·128 = 20,971,520; MLM output
    2·640·128·30522 = 5,000,724,480; next sentence 2·32·128·2 = 16,384. Total
    2·1,879,048,192 + 1,048,576 + 20,971,520 + 5,000,724,480 + 16,384:

    >>> sum(forward_flops(num_layers=2, hidden_size=128, intermediate_size=512,
    ...     vocab_size=30522, batch_size=32, seq_length=128, predictions=20).values())
    8780857344

    With the last layer at R = 21 rows of 128, that layer keeps its keys and values,
    2·2·4096·128·128 = 268,435,456, and the rest shrinks by 21/128: 2·2·672·128·128
    (Q, output) + 2·2·32·21·128·128 (scores, context) + 2·2·672·128·512 (FFN) =
    44,040,192 + 44,040,192 + 176,160,768. So 1,879,048,192 − 268,435,456 − 264,241,152
    fewer:

    >>> sum(forward_flops(num_layers=2, hidden_size=128, intermediate_size=512,
    ...     vocab_size=30522, batch_size=32, seq_length=128, predictions=20,
    ...     last_layer_rows=21).values())
    7434485760

    Packed to T = 3840 of the 4096 tokens as well, the first layer's projections lose
    8·256·128·128 = 33,554,432 and its FFN 2·2·256·128·512 = 67,108,864, the last layer's
    keys and values 2·2·256·128·128 = 16,777,216; 117,440,512 fewer:

    >>> sum(forward_flops(num_layers=2, hidden_size=128, intermediate_size=512,
    ...     vocab_size=30522, batch_size=32, seq_length=128, predictions=20,
    ...     last_layer_rows=21, packed_tokens=3840).values())
    7317045248
    """
    b, s, p = batch_size, seq_length, predictions
    h, i, v = hidden_size, intermediate_size, vocab_size
    tokens = b * s if packed_tokens is None else packed_tokens  # rows of the dense products
    # Query rows per sequence, layer by layer (all S but maybe in the last layer), and the
    # dense products' rows at them.
    rows = [s] * num_layers
    query_tokens = [tokens] * num_layers
    if last_layer_rows is not None:
        rows[-1] = last_layer_rows
        query_tokens[-1] = b * last_layer_rows
    flops = {
        # K and V for all tokens, Q and the output projection for the query rows.
        "attention_projections": sum(
            2 * 2 * tokens * h * h + 2 * 2 * q * h * h for q in query_tokens
        ),
        "attention_scores": sum(2 * b * r * s * h for r in rows),  # [B,N,R,D] × [B,N,D,S]
        "attention_context": sum(2 * b * r * s * h for r in rows),  # [B,N,R,S] × [B,N,S,D]
        "feed_forward": sum(2 * 2 * q * h * i for q in query_tokens),  # [Q,H]×[H,I], [Q,I]×[I,H]
        "pooler": 2 * b * h * h,  # the first token of each sequence
        "mlm_transform": 2 * b * p * h * h,
        "mlm_output": 2 * b * p * h * v,  # tied to the word embeddings, [BP,H] × [H,V]
    }
    if next_sentence_head:
        flops["next_sentence"] = 2 * b * h * 2
    return flops


def training_flops(forward: dict[str, int]) -> int:
    """FLOPs of one training step: 3 × the forward pass (backward = 2 × forward)."""
    return 3 * sum(forward.values())


if __name__ == "__main__":
    import doctest

    failures, _ = doctest.testmod()
    raise SystemExit(1 if failures else 0)
