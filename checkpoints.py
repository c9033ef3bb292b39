"""BERT weights in and out: this tool's checkpoints, the original TF1 names, Hugging Face.

In: `resolve_init_checkpoint` tells what a path holds — a checkpoint of this tool
(object-based, keys `model/encoder/...`), an original google-research/bert checkpoint
(name-based, `bert/encoder/layer_0/...`, `cls/predictions/...`) or a Hugging Face BERT
(`config.json` + `model.safetensors`) — and `restore_initial_weights` assigns its values to
a built `modeling.BertPretrainingModel`, checking every shape and the config beside the
weights. `load_bert_config` reads our `bert_config.json` or a Hugging Face `config.json`.

Out: `export_huggingface`, `export_original` and `export_savedmodel` write a model's weights
as a Hugging Face BertForPreTraining directory, as an original-release checkpoint
directory (`bert_model.ckpt`, `bert_config.json`, `vocab.txt`) or as a SavedModel with a
serving signature. Every output is written into a hidden temporary directory and renamed
into place when complete.

The one vocabulary of names is the original release's (`modeling.original_name_map`);
Hugging Face names and layouts are derived from it by `hf_tensor_name`:

    bert/encoder/layer_3/attention/self/query/kernel [H, H] ↔
        bert.encoder.layer.3.attention.self.query.weight [H, H] transposed ([out, in])
    bert/embeddings/LayerNorm/gamma, beta ↔ bert.embeddings.LayerNorm.weight, bias
    cls/predictions/output_bias [V] ↔ cls.predictions.bias
    cls/seq_relationship/output_weights [2, H] ↔ cls.seq_relationship.weight [2, H] (as is)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import data_format
import modeling

KIND_BERT_GPU = "bert-gpu"
KIND_ORIGINAL = "original"
KIND_HUGGINGFACE = "huggingface"
KINDS = (KIND_BERT_GPU, KIND_ORIGINAL, KIND_HUGGINGFACE)

_KIND_DESCRIPTIONS = {
    KIND_BERT_GPU: "a bert-gpu checkpoint",
    KIND_ORIGINAL: "an original google-research/bert checkpoint (TF1 names)",
    KIND_HUGGINGFACE: "a Hugging Face BERT (safetensors)",
}

HF_CONFIG_NAME = "config.json"
HF_WEIGHTS_NAME = "model.safetensors"
HF_SHARDED_INDEX_NAME = "model.safetensors.index.json"
BERT_CONFIG_NAME = "bert_config.json"
VOCAB_NAME = "vocab.txt"
ORIGINAL_CHECKPOINT_NAME = "bert_model.ckpt"

# ---------------------------------------------------------------------------------------
# Configs: ours and Hugging Face's
# ---------------------------------------------------------------------------------------

# Hugging Face `hidden_act` → ours. Hugging Face's "gelu" is the exact erf form (our
# "gelu_exact"); its "gelu_new", "gelu_pytorch_tanh" and "gelu_fast" are all the tanh
# approximation of the original release (our "gelu"), written three ways; "gelu_python"
# is the erf form in Python. Other activations (silu, quick_gelu, gelu_accurate, ...) have
# no counterpart here and are refused.
HF_TO_OUR_ACTIVATION = {
    "gelu": "gelu_exact",
    "gelu_python": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
}
# Ours → Hugging Face's.
OUR_TO_HF_ACTIVATION = {
    "gelu": "gelu_new",
    "gelu_new": "gelu_new",
    "gelu_exact": "gelu",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
}

# Our LayerNorm adds modeling.LAYER_NORM_EPSILON (1e-12) to the variance. A Hugging Face
# epsilon up to this bound is accepted: LayerNorm divides by sqrt(var + eps), so a
# different eps changes its outputs by a relative ≈ Δeps / (2·var) ≤ 5e-7 for inputs of
# unit variance — far below the 1e-4 to which float32 implementations agree anyway.
# Larger values (1e-5, 1e-6 are common in other model families) would change the model.
MAX_LAYER_NORM_EPS = 1e-6

# Hugging Face config keys that map one-to-one onto bert_config.json fields.
_HF_SHARED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
)
# Keys a Hugging Face config.json may carry that do not change what the encoder and the
# pretraining heads compute from token ids: bookkeeping, token ids, fine-tuning labels,
# generation and output options. They are accepted and dropped.
HF_IGNORED_CONFIG_KEYS = frozenset(
    {
        "architectures",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "use_cache",
        "gradient_checkpointing",
        "chunk_size_feed_forward",  # chunks the feed-forward: the same numbers, less memory
        "classifier_dropout",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "tokenizer_class",
        "prefix",
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "finetuning_task",
        "task_specific_params",
        "return_dict",
        "output_attentions",
        "output_hidden_states",
        "output_past",
        "torchscript",
        "use_bfloat16",
        "tf_legacy_loss",
        "xla_device",
        "is_encoder_decoder",
        "tie_encoder_decoder",
        "cross_attention_hidden_size",
        "tie_word_embeddings",  # our MLM output is always tied; restore checks the weights
        # Generation settings serialised by older transformers versions.
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "num_beam_groups",
        "diversity_penalty",
        "temperature",
        "top_k",
        "top_p",
        "typical_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size",
        "bad_words_ids",
        "num_return_sequences",
        "output_scores",
        "return_dict_in_generate",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
    }
    | modeling.IGNORED_CONFIG_KEYS
)
# Keys Hugging Face writes only when they differ from the default, and the defaults we
# can compute; any other value is refused.
_HF_REQUIRED_VALUES = {
    "position_embedding_type": ("absolute", "only absolute position embeddings are built here"),
    "is_decoder": (False, "a decoder attends causally; this BERT attends both ways"),
    "add_cross_attention": (False, "cross-attention layers are not built here"),
}


def is_hf_config(values: Mapping[str, Any]) -> bool:
    """True if the dict of a config file is a Hugging Face config.json, not a bert_config.json.

    Hugging Face writes "model_type" (and usually "architectures", "layer_norm_eps",
    "transformers_version"); the original bert_config.json has none of these.
    """
    return any(
        key in values
        for key in ("model_type", "architectures", "layer_norm_eps", "transformers_version")
    )


def bert_config_from_hf_dict(
    values: Mapping[str, Any], source: str = "<dict>"
) -> modeling.BertConfig:
    """Builds our BertConfig from the keys of a Hugging Face BERT config.json.

    Args:
        values: the parsed config.json.
        source: the file name, for error messages.

    Returns:
        The BertConfig of the same computation; `hidden_act` translated (Hugging Face's
        "gelu" → "gelu_exact", "gelu_new" → "gelu").

    Raises:
        ValueError: naming `source`, the key and its value, for a model type other than
            "bert", an activation, position-embedding type, LayerNorm epsilon or other
            setting this model cannot compute, a missing size or an unknown key.
    """
    problems = []
    model_type = values.get("model_type", "bert")
    if model_type != "bert":
        problems.append(
            f"model_type is {model_type!r}; only 'bert' is supported (other families "
            "differ in positions, tokenizers or layer layout)"
        )
    for key, (expected, why) in _HF_REQUIRED_VALUES.items():
        if key in values and values[key] != expected:
            problems.append(f"{key} is {values[key]!r}, expected {expected!r}: {why}")
    if values.get("pruned_heads"):
        problems.append(
            f"pruned_heads is {values['pruned_heads']!r}: pruned attention layers have "
            "fewer heads than num_attention_heads, which this model cannot hold"
        )
    if values.get("quantization_config"):
        problems.append("quantization_config is set: quantized weights cannot be read here")
    eps = values.get("layer_norm_eps", modeling.LAYER_NORM_EPSILON)
    if not isinstance(eps, (int, float)) or not 0.0 <= eps <= MAX_LAYER_NORM_EPS:
        problems.append(
            f"layer_norm_eps is {eps!r}: this model's LayerNorm uses epsilon "
            f"{modeling.LAYER_NORM_EPSILON:g}, and values up to {MAX_LAYER_NORM_EPS:g} are "
            "accepted as the same computation; a larger one changes the outputs"
        )
    hf_act = values.get("hidden_act", "gelu")
    if hf_act not in HF_TO_OUR_ACTIVATION:
        problems.append(
            f"hidden_act is {hf_act!r}; supported: "
            + ", ".join(f"{name!r}" for name in HF_TO_OUR_ACTIVATION)
        )
    handled = {*_HF_SHARED_KEYS, *_HF_REQUIRED_VALUES, "model_type", "hidden_act"}
    handled |= {"pruned_heads", "quantization_config", "layer_norm_eps"}
    unknown = [
        key
        for key in values
        if key not in handled and key not in HF_IGNORED_CONFIG_KEYS and not key.startswith("_")
    ]
    if unknown:
        problems.append(
            "unknown key(s) "
            + ", ".join(f"{key!r} (value {values[key]!r})" for key in unknown)
            + "; if they do not change what the model computes, remove them from a copy "
            "of the file and use that"
        )
    missing = [key for key in ("vocab_size",) if key not in values]
    if missing:
        problems.append("missing key(s) " + ", ".join(map(repr, missing)))
    if problems:
        raise ValueError(
            f"{source} (a Hugging Face config) cannot be used: " + "; ".join(problems) + "."
        )
    # Hugging Face's defaults for the keys a config.json may omit (it writes only the
    # values that differ from them); type_vocab_size defaults to 2 there, 16 in ours.
    hf_defaults = {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
    }
    ours = {key: values.get(key, hf_defaults.get(key)) for key in _HF_SHARED_KEYS}
    ours["hidden_act"] = HF_TO_OUR_ACTIVATION[hf_act]
    return modeling.BertConfig.from_dict(ours, source=source)


def load_bert_config(path: str | os.PathLike) -> modeling.BertConfig:
    """Reads our bert_config.json or a Hugging Face config.json (told apart by their keys).

    Args:
        path: the config file.

    Returns:
        The BertConfig. For a Hugging Face config, `hidden_act` is translated to ours.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: invalid JSON, or contents that are not a config this model computes
            (see `modeling.BertConfig.from_dict` and `bert_config_from_hf_dict`).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"BERT config file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    if isinstance(values, Mapping) and is_hf_config(values):
        return bert_config_from_hf_dict(values, source=path)
    return modeling.BertConfig.from_json_file(path)


def hf_config_dict(
    bert_config: modeling.BertConfig,
    pad_token_id: int = 0,
    architectures: tuple[str, ...] = ("BertForPreTraining",),
) -> dict[str, Any]:
    """The Hugging Face config.json of a model with `bert_config`.

    Args:
        bert_config: our config.
        pad_token_id: the id of "[PAD]" in the vocabulary (Hugging Face keeps that row of
            the embedding table out of gradient updates; it changes no output).
        architectures: the Hugging Face model classes the weights are laid out for.

    Returns:
        config.json keys and values; `hidden_act` translated ("gelu" → "gelu_new",
        "gelu_exact" → "gelu"), the MLM decoder tied to the word embeddings.
    """
    values = {key: getattr(bert_config, key) for key in _HF_SHARED_KEYS}
    values.update(
        architectures=list(architectures),
        model_type="bert",
        hidden_act=OUR_TO_HF_ACTIVATION[bert_config.hidden_act],
        layer_norm_eps=modeling.LAYER_NORM_EPSILON,
        position_embedding_type="absolute",
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
    )
    return values


def hf_tokenizer_config(
    do_lower_case: bool, model_max_length: int, special_tokens: Mapping[str, str]
) -> dict[str, Any]:
    """The tokenizer_config.json of a WordPiece vocabulary for Hugging Face's BertTokenizer.

    Args:
        do_lower_case: lower-case and strip accents (uncased models), as in the original
            tokenizer; a cased model keeps both.
        model_max_length: the longest sequence the model takes (max_position_embeddings).
        special_tokens: e.g. {"unk_token": "[UNK]", ...}, those present in the vocabulary.
    """
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": do_lower_case,
        # None: strip accents exactly when lower-casing, as the original release does.
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **special_tokens,
    }


# The fields that decide what a model computes from its weights (dropout and the
# initializer range do not).
_ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
)


def check_configs_agree(
    checkpoint_config: modeling.BertConfig, bert_config: modeling.BertConfig, source: str
) -> None:
    """Raises ValueError naming each architecture field on which two configs differ.

    Args:
        checkpoint_config: the config found beside the weights (file `source`).
        bert_config: the config the model was built with (--bert_config_file).
        source: the file of `checkpoint_config`, for the message.
    """
    differences = []
    for field in _ARCHITECTURE_FIELDS:
        ours, theirs = getattr(bert_config, field), getattr(checkpoint_config, field)
        same = ours == theirs
        if field == "hidden_act":  # "gelu" and "gelu_new" are one function
            same = modeling.ACTIVATIONS[ours] is modeling.ACTIVATIONS[theirs]
        if not same:
            differences.append(f"{field} is {theirs!r} there but {ours!r} in the model's config")
    if differences:
        raise ValueError(
            f"the checkpoint's config {source} disagrees with the model's config "
            "(--bert_config_file): " + "; ".join(differences) + f". Use --bert_config_file={source}"
            " to continue from these weights, or a checkpoint made with your config."
        )


# ---------------------------------------------------------------------------------------
# What a path holds
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InitSource:
    """Weights to start from, as `resolve_init_checkpoint` found them.

    Attributes:
        kind: one of KINDS: "bert-gpu", "original" or "huggingface".
        path: the checkpoint prefix (bert-gpu, original) or the .safetensors file (or the
            model.safetensors.index.json of a sharded one).
        files: the files holding the tensors: (prefix,) or the .safetensors file(s).
        config_path: the model config found beside the weights (Hugging Face config.json
            or bert_config.json), or None; restore checks it against the model's config.
    """

    kind: str
    path: str
    files: tuple[str, ...]
    config_path: str | None = None

    def describe(self) -> str:
        """E.g. "a Hugging Face BERT (safetensors) at dir/model.safetensors"."""
        return f"{_KIND_DESCRIPTIONS[self.kind]} at {self.path}"


_EXPECTED_CHECKPOINT = (
    "expected one of: a checkpoint prefix of this tool (out/model.ckpt-1000, the files "
    "model.ckpt-1000.index and .data-*), a training output directory (its newest "
    "checkpoint), an original BERT checkpoint (e.g. uncased_L-12_H-768_A-12/bert_model.ckpt "
    "or its directory), a Hugging Face model directory (config.json + model.safetensors) "
    "or a .safetensors file"
)


def _checkpoint_kind(prefix: str, flag: str) -> str:
    """ "bert-gpu" or "original", from the variable names stored under `prefix`."""
    try:
        names = [name for name, _ in tf.train.list_variables(prefix)]
    except (tf.errors.OpError, ValueError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        raise ValueError(f"{flag}={prefix}: the checkpoint cannot be read: {message}") from None
    if any(name.startswith("model/") for name in names):
        return KIND_BERT_GPU
    if any(name.startswith(("bert/", "cls/")) for name in names):
        return KIND_ORIGINAL
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise ValueError(
        f"{flag}={prefix}: the checkpoint holds no BERT weights (its variables: "
        f"{shown or 'none'}); expected this tool's names (model/encoder/...) or the "
        "original release's (bert/..., cls/...)"
    )


def find_config_beside(checkpoint_path: str) -> str | None:
    """The model config in the directory of a checkpoint (or in that directory itself).

    Looks for bert_config.json, then Hugging Face's config.json.
    """
    directory = (
        checkpoint_path if os.path.isdir(checkpoint_path) else os.path.dirname(checkpoint_path)
    )
    for name in (BERT_CONFIG_NAME, HF_CONFIG_NAME):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _hf_source(path: str, files: list[str], config_path: str | None) -> InitSource:
    return InitSource(KIND_HUGGINGFACE, path, tuple(files), config_path)


def _sharded_files(index_path: str, flag: str) -> list[str]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{flag}={index_path}: not a safetensors index (a JSON object with "
            f"'weight_map'): {error}"
        ) from None
    directory = os.path.dirname(index_path)
    files = sorted({os.path.join(directory, name) for name in weight_map.values()})
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
        raise ValueError(f"{flag}={index_path}: shard(s) missing: {', '.join(absent)}")
    return files


def resolve_init_checkpoint(path: str, flag: str = "--init_checkpoint") -> InitSource:
    """Finds the weights `path` names and which kind they are.

    Args:
        path: a checkpoint prefix of this tool or of the original release (a `.index`
            suffix is accepted); a directory of either (its newest checkpoint, by the
            `checkpoint` file, or its only one); a Hugging Face model directory
            (config.json + model.safetensors, or a sharded model.safetensors.index.json);
            or a .safetensors file.
        flag: the flag that named `path`, for error messages.

    Returns:
        The InitSource.

    Raises:
        ValueError: naming the flag and the path and what was expected, when there is
            nothing there that this tool reads (e.g. only pytorch_model.bin).
    """
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise ValueError(f"{flag}={path}: no such file")
        config = os.path.join(os.path.dirname(path), HF_CONFIG_NAME)
        return _hf_source(path, [path], config if os.path.isfile(config) else None)
    if path.endswith(".safetensors.index.json"):
        config = os.path.join(os.path.dirname(path), HF_CONFIG_NAME)
        files = _sharded_files(path, flag)
        return _hf_source(path, files, config if os.path.isfile(config) else None)
    if tf.io.gfile.isdir(path):
        return _resolve_directory(path, flag)
    prefix = path[: -len(".index")] if path.endswith(".index") else path
    if not tf.io.gfile.exists(prefix + ".index"):
        raise ValueError(
            f"{flag}={path}: no checkpoint there (no {prefix}.index); {_EXPECTED_CHECKPOINT}"
        )
    return InitSource(_checkpoint_kind(prefix, flag), prefix, (prefix,), find_config_beside(prefix))


def _resolve_directory(path: str, flag: str) -> InitSource:
    entries = {name.rstrip("/") for name in tf.io.gfile.listdir(path)}
    hf_weights = os.path.join(path, HF_WEIGHTS_NAME)
    hf_index = os.path.join(path, HF_SHARDED_INDEX_NAME)
    hf_config = os.path.join(path, HF_CONFIG_NAME)
    config = hf_config if os.path.isfile(hf_config) else None
    latest = tf.train.latest_checkpoint(path)
    indexes = sorted(name[: -len(".index")] for name in entries if name.endswith(".index"))
    has_tf = latest is not None or bool(indexes)
    has_hf = os.path.isfile(hf_weights) or os.path.isfile(hf_index)
    if has_tf and has_hf:
        raise ValueError(
            f"{flag}={path}: the directory holds both TensorFlow checkpoints and "
            f"{HF_WEIGHTS_NAME}; name one: a checkpoint prefix or the .safetensors file"
        )
    if os.path.isfile(hf_weights):
        return _hf_source(hf_weights, [hf_weights], config)
    if os.path.isfile(hf_index):
        return _hf_source(hf_index, _sharded_files(hf_index, flag), config)
    if latest is None and len(indexes) == 1:  # e.g. a released bert_model.ckpt, no state file
        latest = os.path.join(path, indexes[0])
    if latest is not None:
        return InitSource(
            _checkpoint_kind(latest, flag), latest, (latest,), find_config_beside(latest)
        )
    if indexes:
        raise ValueError(
            f"{flag}={path}: the directory holds several checkpoints ("
            + ", ".join(indexes)
            + ") and no 'checkpoint' file naming the newest; name one of them"
        )
    other = sorted(entries & {"pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"})
    if other:
        raise ValueError(
            f"{flag}={path}: the directory holds {', '.join(other)} but no {HF_WEIGHTS_NAME}; "
            "this tool reads Hugging Face weights as safetensors only. Convert them once with "
            "transformers: AutoModel.from_pretrained(dir).save_pretrained(new_dir) writes "
            "model.safetensors"
        )
    raise ValueError(f"{flag}={path}: the directory holds no checkpoint; {_EXPECTED_CHECKPOINT}")


# ---------------------------------------------------------------------------------------
# Names and layouts
# ---------------------------------------------------------------------------------------

_EMBEDDING_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")
# Original names whose Hugging Face name does not follow from the rules of hf_tensor_name.
_HF_SPECIAL_NAMES = {
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
}


def hf_tensor_name(original_name: str) -> tuple[str, bool]:
    """The Hugging Face name of an original variable, and whether its layout is transposed.

    Dense kernels are [in, out] in the original and [out, in] in Hugging Face (PyTorch's
    nn.Linear); embedding tables, LayerNorm parameters, biases and the next-sentence
    output weights ([2, H] in both) are stored as they are.

    Args:
        original_name: e.g. "bert/encoder/layer_3/attention/self/query/kernel".

    Returns:
        (e.g. "bert.encoder.layer.3.attention.self.query.weight", True).
    """
    if original_name in _HF_SPECIAL_NAMES:
        return _HF_SPECIAL_NAMES[original_name], False
    parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", part) for part in original_name.split("/")]
    leaf = parts[-1]
    transposed = leaf == "kernel"
    if leaf in _EMBEDDING_TABLES:
        parts.append("weight")
    else:
        parts[-1] = {"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(leaf, leaf)
    return ".".join(parts), transposed


def _canonical_hf_name(name: str) -> str:
    """A Hugging Face tensor name in BertForPreTraining's spelling.

    A bare BertModel's names lack the "bert." prefix; checkpoints of transformers < 4
    call LayerNorm's parameters gamma and beta.
    """
    if not name.startswith(("bert.", "cls.")) and name.startswith(
        ("embeddings.", "encoder.", "pooler.")
    ):
        name = "bert." + name
    return re.sub(
        r"LayerNorm\.gamma$",
        "LayerNorm.weight",
        re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name),
    )


def _model_paths(model: keras.Model) -> dict[int, tuple[str, ...]]:
    """id(variable) → the attribute path from the model to it, as tf.train.Checkpoint sees it.

    E.g. ("encoder", "layer_0", "attention", "query", "_kernel"): the names of the
    trackable children along the way, which need not be the Keras layer names.
    """
    view = tf.train.TrackableView(model)
    paths: dict[int, tuple[str, ...]] = {}
    queue: list[tuple[Any, tuple[str, ...]]] = [(model, ())]
    seen = {id(model)}
    while queue:
        obj, path = queue.pop(0)
        for name, child in view.children(obj).items():
            if id(child) not in seen:
                seen.add(id(child))
                paths[id(child)] = (*path, name)
                queue.append((child, (*path, name)))
    return paths


def _object_checkpoint_keys(model: keras.Model, reader: Any) -> dict[str, str]:
    """original name → the key of the variable's value in an object-based checkpoint.

    The checkpoint stores its object graph: from the root, named edges lead to each
    object, and a variable's node names the key of its value. The key is the first path
    TensorFlow found when saving (e.g. "optimizer/_trainable_variables/3/..." when the
    optimizer tracks the variable too), so it is looked up by following the edges
    root → "model" → ... that lead to the variable in the live model.
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    paths = _model_paths(model)
    keys = {}
    for name, variable in modeling.original_name_map(model).items():
        node = graph.nodes[0]  # the tf.train.Checkpoint root
        for step in ("model", *paths.get(id(variable), ("<not tracked>",))):
            child = next((c.node_id for c in node.children if c.local_name == step), None)
            if child is None:
                break
            node = graph.nodes[child]
        else:
            for attribute in node.attributes:
                if attribute.name == "VARIABLE_VALUE":
                    keys[name] = attribute.checkpoint_key
    return keys


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InitReport:
    """What `restore_initial_weights` did.

    Attributes:
        kind: the InitSource's kind.
        path: the InitSource's path.
        loaded: original names of the variables assigned from the checkpoint.
        missing: original names of the model's variables the checkpoint lacks; they keep
            their usual initial values (e.g. the pretraining heads of a bare encoder).
        ignored: names in the checkpoint that were not loaded (as stored there): optimizer
            slots, step counters, the input position, other heads, duplicates of tied
            weights.
    """

    kind: str
    path: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    ignored: tuple[str, ...]

    def log_lines(self) -> list[str]:
        """One line for what was loaded; one each for what was missing and what was ignored."""
        what = _KIND_DESCRIPTIONS[self.kind]
        lines = [f"initialized {len(self.loaded)} variable(s) from {what}: {self.path}"]
        if self.missing:
            lines.append(
                f"not in the checkpoint, initialized as usual ({len(self.missing)}): "
                + ", ".join(self.missing)
            )
        if self.ignored:
            lines.append(f"in the checkpoint but not used: {_summarize_names(self.ignored)}")
        return lines


def _summarize_names(names: tuple[str, ...]) -> str:
    """Names, with optimizer slots and training state counted rather than listed."""
    groups = {
        "optimizer slots (adam_m/adam_v)": r"/adam_[mv]$",
        "optimizer state (optimizer/...)": r"^optimizer/",
        "input position (data/...)": r"^data/",
    }
    parts, rest = [], list(names)
    for label, pattern in groups.items():
        matched = [name for name in rest if re.search(pattern, name)]
        if matched:
            parts.append(f"{len(matched)} {label}")
            rest = [name for name in rest if name not in set(matched)]
    return ", ".join(rest + parts)


@dataclasses.dataclass(frozen=True)
class _Stored:
    value: np.ndarray  # in our layout
    name: str  # as stored in the checkpoint


def _read_safetensors(files: tuple[str, ...]) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    tensors = {}
    for path in files:
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():
                    if f.get_slice(name).get_dtype() == "BF16":  # no bfloat16 in NumPy
                        tensors[name] = _read_bfloat16(path, name)
                    else:
                        tensors[name] = f.get_tensor(name)
        except Exception as error:  # OSError, or SafetensorError for a header that does not parse
            raise ValueError(f"{path}: not a readable safetensors file: {error}") from None
    return tensors


def _read_bfloat16(path: str, name: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(path, framework="tf") as f:
        return tf.cast(f.get_tensor(name), tf.float32).numpy()


def _layer_indices(names: list[str], pattern: str) -> set[int]:
    return {int(m.group(1)) for m in (re.search(pattern, name) for name in names) if m}


def _read_checkpoint(
    model: modeling.BertPretrainingModel, source: InitSource
) -> tuple[dict[str, _Stored], list[str], set[int]]:
    """(original name → stored value, names not used, transformer layer indices found)."""
    wanted = modeling.original_name_map(model)
    values: dict[str, _Stored] = {}
    if source.kind == KIND_HUGGINGFACE:
        tensors = _read_safetensors(source.files)
        by_hf = {hf_tensor_name(name)[0]: name for name in wanted}
        layers = _layer_indices(list(tensors), r"(?:^|\.)encoder\.layer\.(\d+)\.")
        ignored = []
        for stored_name, tensor in tensors.items():
            name = by_hf.get(_canonical_hf_name(stored_name))
            if name is None:
                ignored.append(stored_name)
                continue
            transposed = hf_tensor_name(name)[1]
            values[name] = _Stored(tensor.T if transposed else tensor, stored_name)
        ignored = _check_hf_tied_weights(tensors, values, ignored, source.path)
        return values, ignored, layers
    reader = tf.train.load_checkpoint(source.path)
    stored = sorted(reader.get_variable_to_shape_map())
    if source.kind == KIND_ORIGINAL:
        keys = {name: name for name in wanted}
        layers = _layer_indices(stored, r"^bert/encoder/layer_(\d+)/")
    else:
        keys = _object_checkpoint_keys(model, reader)
        layers = _object_checkpoint_layers(reader)
    present = set(stored)
    for name, key in keys.items():
        if key in present:
            values[name] = _Stored(reader.get_tensor(key), key)
    used = {stored_value.name for stored_value in values.values()}
    ignored = [key for key in stored if key not in used and key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return values, ignored, layers


def _object_checkpoint_layers(reader: Any) -> set[int]:
    """The indices of the transformer layers (root → model → encoder → layer_i) stored."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    node = graph.nodes[0]
    for step in ("model", "encoder"):
        child = next((c.node_id for c in node.children if c.local_name == step), None)
        if child is None:
            return set()
        node = graph.nodes[child]
    return _layer_indices([c.local_name for c in node.children], r"^layer_(\d+)$")


def _check_hf_tied_weights(
    tensors: Mapping[str, np.ndarray], values: dict[str, _Stored], ignored: list[str], path: str
) -> list[str]:
    """Checks the MLM decoder's copies of tied weights; returns the ignored names without them.

    BertForPreTraining/BertForMaskedLM files may hold cls.predictions.decoder.weight (the
    word embeddings again) and cls.predictions.decoder.bias (cls.predictions.bias again).
    Our decoder is always the word-embedding table, so an untied, different decoder
    cannot be loaded.
    """
    copies = {
        "cls.predictions.decoder.weight": "bert/embeddings/word_embeddings",
        "cls.predictions.decoder.bias": "cls/predictions/output_bias",
    }
    for hf_name, original in copies.items():
        if hf_name not in tensors:
            continue
        copy = tensors[hf_name]
        if original not in values:
            if hf_name.endswith("bias"):  # the bias saved only under the decoder's name
                values[original] = _Stored(copy, hf_name)
                ignored = [name for name in ignored if name != hf_name]
            continue
        kept = values[original].value
        if copy.shape != kept.shape or not np.array_equal(copy, kept):
            raise ValueError(
                f"{path}: {hf_name} differs from {values[original].name} (shapes "
                f"{list(copy.shape)} and {list(kept.shape)}): the masked-LM decoder is not "
                "tied to the word embeddings (tie_word_embeddings false?). This BERT always "
                "ties them, as the original does; such a checkpoint cannot be loaded whole."
            )
    return ignored


# The config field that sets each dimension of a variable, for error messages.
def _size_field(name: str) -> str:
    if name.endswith(("word_embeddings", "predictions/output_bias")):
        return "vocab_size"
    if name.endswith("position_embeddings"):
        return "max_position_embeddings"
    if name.endswith("token_type_embeddings"):
        return "type_vocab_size"
    if "/intermediate/" in name or re.search(r"layer_\d+/output/dense/kernel$", name):
        return "intermediate_size"
    return "hidden_size"


def restore_initial_weights(
    model: modeling.BertPretrainingModel,
    source: InitSource,
    bert_config: modeling.BertConfig,
) -> InitReport:
    """Assigns the weights of `source` to the variables of a built model.

    Works in cross-replica context under a distribution strategy: assigning a mirrored
    variable there updates every replica's copy. Values are cast to the variables' dtype
    (float32 master weights, whatever the compute policy). The original release's
    optimizer slots (adam_m, adam_v), global_step, and this tool's optimizer, step and
    input-position entries are not loaded.

    Args:
        model: a BertPretrainingModel after `build_weights()`.
        source: from `resolve_init_checkpoint`.
        bert_config: the config the model was built with (--bert_config_file).

    Returns:
        The InitReport: loaded, missing (left as initialised) and ignored names.

    Raises:
        ValueError: if the config beside the checkpoint disagrees with `bert_config`
            (each field with both values), the checkpoint has another number of layers,
            a variable's shape differs (its name and both shapes), or nothing in the
            checkpoint fits the model.
    """
    if source.config_path:
        check_configs_agree(load_bert_config(source.config_path), bert_config, source.config_path)
    variables = modeling.original_name_map(model)
    values, ignored, layers = _read_checkpoint(model, source)
    if layers and max(layers) + 1 != bert_config.num_hidden_layers:
        raise ValueError(
            f"{source.path}: the checkpoint has {max(layers) + 1} transformer layers "
            f"(layer_0 ... layer_{max(layers)}), the model's config num_hidden_layers="
            f"{bert_config.num_hidden_layers}; use the config the checkpoint was made with"
        )
    mismatches = []
    for name, stored in values.items():
        expected = tuple(variables[name].shape)
        if tuple(stored.value.shape) != expected:
            mismatches.append(
                f"{name} (stored as {stored.name}) has shape {list(stored.value.shape)} in the "
                f"checkpoint but {list(expected)} in the model (see {_size_field(name)})"
            )
    if mismatches:
        raise ValueError(
            f"{source.path} does not fit the model: "
            + "; ".join(mismatches)
            + ". Use the config the checkpoint was made with as --bert_config_file"
            + (f" ({source.config_path})" if source.config_path else "")
            + "."
        )
    if not values:
        raise ValueError(
            f"{source.path}: none of the model's variables is in the checkpoint "
            f"(it holds {_summarize_names(tuple(ignored)) or 'nothing'})"
        )
    for name, stored in values.items():
        variable = variables[name]
        variable.assign(stored.value.astype(variable.dtype))
    return InitReport(
        kind=source.kind,
        path=source.path,
        loaded=tuple(name for name in variables if name in values),
        missing=tuple(name for name in variables if name not in values),
        ignored=tuple(ignored),
    )


# ---------------------------------------------------------------------------------------
# Weights in each layout
# ---------------------------------------------------------------------------------------


def original_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Every variable of a built model as float32 NumPy, keyed by its original name."""
    return {
        name: np.asarray(variable.numpy(), np.float32)
        for name, variable in modeling.original_name_map(model).items()
    }


def hf_weights(model: modeling.BertPretrainingModel) -> dict[str, np.ndarray]:
    """The model's weights in Hugging Face BertForPreTraining's names and layouts.

    The tied decoder (cls.predictions.decoder.weight/bias) is left out, as transformers
    itself saves it: on loading, it is tied to bert.embeddings.word_embeddings.weight
    and cls.predictions.bias.
    """
    weights = {}
    for name, value in original_weights(model).items():
        hf_name, transposed = hf_tensor_name(name)
        weights[hf_name] = np.ascontiguousarray(value.T if transposed else value)
    return weights


# ---------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------

SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def read_vocab(vocab_file: str) -> list[str]:
    """The tokens of a WordPiece vocab.txt, one per line, in id order."""
    with open(vocab_file, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def infer_do_lower_case(tokens: list[str]) -> bool:
    """True when no token has an upper-case letter: a vocabulary made from lower-cased text.

    An uncased vocabulary (the original uncased release, build_vocab.py with
    --do_lower_case) holds no upper-case letter; a cased one holds many.
    """
    return not any(any(ch.isupper() for ch in token) for token in tokens if not _is_special(token))


def _is_special(token: str) -> bool:
    return token.startswith("[") and token.endswith("]")


@dataclasses.dataclass(frozen=True)
class VocabInfo:
    """A vocabulary found for a checkpoint: the file, the casing if known, where from."""

    vocab_file: str
    do_lower_case: bool | None
    found_in: str


def find_vocab_beside(checkpoint_path: str) -> VocabInfo | None:
    """The vocab.txt of a checkpoint, and its casing when the training data says it.

    Looks for vocab.txt in the checkpoint's directory; else, for a training output
    directory, in the metadata of its training data (train_config.json names the files;
    each file F has F.json with the vocab_file, its SHA-256 and do_lower_case), used only
    if that vocabulary file still exists with the same contents.
    """
    directory = (
        checkpoint_path if os.path.isdir(checkpoint_path) else os.path.dirname(checkpoint_path)
    )
    directory = directory or "."
    beside = os.path.join(directory, VOCAB_NAME)
    if os.path.isfile(beside):
        return VocabInfo(beside, None, directory)
    try:
        with open(os.path.join(directory, "train_config.json"), encoding="utf-8") as f:
            train_files = json.load(f).get("train_files") or []
        with open(train_files[0] + ".json", encoding="utf-8") as f:
            metadata = json.load(f)
        vocab_file = metadata["vocab_file"]
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    if not vocab_file or not os.path.isfile(vocab_file):
        return None
    if metadata.get("vocab_sha256") and metadata["vocab_sha256"] != data_format.file_sha256(
        vocab_file
    ):
        return None
    do_lower_case = metadata.get("do_lower_case")
    return VocabInfo(
        vocab_file,
        do_lower_case if isinstance(do_lower_case, bool) else None,
        train_files[0] + ".json",
    )


def _checked_vocab(vocab_file: str, bert_config: modeling.BertConfig) -> list[str]:
    tokens = read_vocab(vocab_file)
    if len(tokens) > bert_config.vocab_size:
        raise ValueError(
            f"{vocab_file} has {len(tokens)} tokens but the model's vocab_size is "
            f"{bert_config.vocab_size}: ids past {bert_config.vocab_size - 1} have no "
            "embedding. Pass the vocabulary the model was trained with (--vocab_file)."
        )
    return tokens


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def check_output_dir(output_dir: str, overwrite: bool = False) -> None:
    """Raises ValueError if `output_dir` is a file, or a non-empty directory and not `overwrite`."""
    if os.path.exists(output_dir):
        if not os.path.isdir(output_dir):
            raise ValueError(f"--output_dir={output_dir} exists and is not a directory")
        if os.listdir(output_dir) and not overwrite:
            raise ValueError(
                f"--output_dir={output_dir} exists and is not empty; choose a new directory "
                "or pass --overwrite to replace it"
            )


@contextlib.contextmanager
def _atomic_directory(output_dir: str, overwrite: bool) -> Iterator[str]:
    """Yields a hidden temporary directory that becomes `output_dir` when the block ends.

    On an error the temporary directory is removed and `output_dir` is untouched. An
    existing non-empty `output_dir` is an error unless `overwrite`, when it is replaced.
    """
    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, overwrite)
    parent, name = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        yield temporary
        if os.path.exists(output_dir):
            old = os.path.join(parent, f".{name}.old-{os.getpid()}")
            os.rename(output_dir, old)
            os.rename(temporary, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temporary, output_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _write_json(path: str, values: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _special_tokens(tokens: list[str]) -> dict[str, str]:
    present = set(tokens)
    return {key: token for key, token in SPECIAL_TOKENS.items() if token in present}


def export_huggingface(
    model: modeling.BertPretrainingModel,
    output_dir: str,
    vocab_file: str,
    do_lower_case: bool,
    overwrite: bool = False,
) -> list[str]:
    """Writes a Hugging Face BertForPreTraining directory.

    It holds config.json, model.safetensors (BertForPreTraining names and [out, in]
    layouts, the MLM decoder tied to the word embeddings), vocab.txt,
    tokenizer_config.json and special_tokens_map.json; transformers'
    AutoModelForPreTraining and AutoTokenizer load it offline.

    Args:
        model: a built BertPretrainingModel.
        output_dir: the directory to create (see `overwrite`).
        vocab_file: the WordPiece vocabulary the model was trained with.
        do_lower_case: whether its tokenizer lower-cases (uncased model).
        overwrite: replace an existing non-empty `output_dir`.

    Returns:
        The names of the files written.
    """
    from safetensors.numpy import save_file

    config = model.config
    tokens = _checked_vocab(vocab_file, config)
    special = _special_tokens(tokens)
    pad_id = tokens.index("[PAD]") if "[PAD]" in special.values() else 0
    with _atomic_directory(output_dir, overwrite) as directory:
        _write_json(os.path.join(directory, HF_CONFIG_NAME), hf_config_dict(config, pad_id))
        # "format": "pt" tells transformers the tensors are laid out as PyTorch's.
        save_file(
            hf_weights(model), os.path.join(directory, HF_WEIGHTS_NAME), metadata={"format": "pt"}
        )
        shutil.copyfile(vocab_file, os.path.join(directory, VOCAB_NAME))
        tokenizer_config = hf_tokenizer_config(
            do_lower_case, config.max_position_embeddings, special
        )
        _write_json(os.path.join(directory, "tokenizer_config.json"), tokenizer_config)
        _write_json(os.path.join(directory, "special_tokens_map.json"), special)
        return sorted(os.listdir(directory))


def write_original_checkpoint(weights: Mapping[str, np.ndarray], prefix: str) -> None:
    """Writes a name-based (TF1-style) checkpoint: `prefix`.index and `prefix`.data-*.

    The tensors are stored under exactly the given names, as tf.compat.v1.train.Saver
    writes them (the same SaveV2 op), so tf.compat.v1.train.init_from_checkpoint and
    tf.train.load_checkpoint read them by those names.
    """
    names = sorted(weights)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(weights[name]) for name in names],
    )


# Activations the original release's modeling.py knows.
_ORIGINAL_ACTIVATIONS = ("gelu", "relu", "tanh", "linear")


def export_original(
    model: modeling.BertPretrainingModel,
    output_dir: str,
    vocab_file: str | None,
    overwrite: bool = False,
) -> list[str]:
    """Writes a directory laid out like an original BERT release.

    bert_model.ckpt.index/.data-00000-of-00001 (the original variable names and layouts),
    bert_config.json and vocab.txt: google-research/bert's code reads them
    (--init_checkpoint=DIR/bert_model.ckpt, --bert_config_file, --vocab_file), and so does
    --init_checkpoint here.

    Args:
        model: a built BertPretrainingModel.
        output_dir: the directory to create.
        vocab_file: the vocabulary to copy beside, or None.
        overwrite: replace an existing non-empty `output_dir`.

    Returns:
        The names of the files written.
    """
    config = model.config
    if vocab_file:
        _checked_vocab(vocab_file, config)
    # The original code knows "gelu" (its tanh form) but not the alias "gelu_new".
    act = "gelu" if config.hidden_act == "gelu_new" else config.hidden_act
    config = dataclasses.replace(config, hidden_act=act)
    with _atomic_directory(output_dir, overwrite) as directory:
        write_original_checkpoint(
            original_weights(model), os.path.join(directory, ORIGINAL_CHECKPOINT_NAME)
        )
        with open(os.path.join(directory, BERT_CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write(config.to_json_string())
        if vocab_file:
            shutil.copyfile(vocab_file, os.path.join(directory, VOCAB_NAME))
        return sorted(os.listdir(directory))


class _ServingModule(tf.Module):
    """The encoder with a serving signature, for tf.saved_model.save."""

    def __init__(self, encoder: modeling.BertEncoder, vocab_file: str | None):
        super().__init__()
        self.encoder = encoder
        if vocab_file:
            self.vocab_file = tf.saved_model.Asset(vocab_file)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="input_ids"),
            tf.TensorSpec([None, None], tf.int32, name="input_mask"),
            tf.TensorSpec([None, None], tf.int32, name="segment_ids"),
        ]
    )
    def serve(self, input_ids, input_mask, segment_ids):
        """[B, S] int32 ids, mask, segments → sequence_output [B, S, H], pooled_output [B, H]."""
        sequence_output, pooled_output = self.encoder(input_ids, segment_ids, input_mask)
        return {
            "sequence_output": tf.cast(sequence_output, tf.float32),
            "pooled_output": tf.cast(pooled_output, tf.float32),
        }


def export_savedmodel(
    model: modeling.BertPretrainingModel,
    output_dir: str,
    vocab_file: str | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Writes the encoder as a SavedModel with a "serving_default" signature.

    Inputs: input_ids, input_mask, segment_ids, int32 [batch, length]; outputs:
    sequence_output float32 [batch, length, hidden], pooled_output float32 [batch, hidden].
    For TF Serving and tf.saved_model.load. The vocabulary, if given, travels as an asset.

    Returns:
        The names of the top-level entries written.
    """
    module = _ServingModule(model.encoder, vocab_file)
    with _atomic_directory(output_dir, overwrite) as directory:
        tf.saved_model.save(module, directory, signatures={"serving_default": module.serve})
        return sorted(os.listdir(directory))
