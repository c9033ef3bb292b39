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
    """
    b, s, p = batch_size, seq_length, predictions
    h, i, v = hidden_size, intermediate_size, vocab_size
    tokens = b * s
    flops = {
        "attention_projections": num_layers * 4 * 2 * tokens * h * h,
        "attention_scores": num_layers * 2 * b * s * s * h,  # [B,N,S,D] × [B,N,D,S]
        "attention_context": num_layers * 2 * b * s * s * h,  # [B,N,S,S] × [B,N,S,D]
        "feed_forward": num_layers * 2 * 2 * tokens * h * i,  # [BS,H]×[H,I], [BS,I]×[I,H]
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
