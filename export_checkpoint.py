"""Exports BERT weights as a Hugging Face model, an original-release checkpoint or a SavedModel.

    python export_checkpoint.py --checkpoint=out --format=huggingface --output_dir=hf_model

--checkpoint is anything --init_checkpoint reads: a checkpoint prefix of this tool, a
training output directory (its newest checkpoint), an original BERT checkpoint or a
Hugging Face model. The model config and the vocabulary are taken from beside it (for a
training output directory: its bert_config.json, and the vocabulary named in its training
data's metadata) unless --bert_config_file and --vocab_file name them.

  --format=huggingface  config.json, model.safetensors (BertForPreTraining), vocab.txt and
                        tokenizer files: transformers' AutoModelForPreTraining /
                        AutoTokenizer.from_pretrained(output_dir) load it.
  --format=original     bert_model.ckpt (the original variable names), bert_config.json,
                        vocab.txt: google-research/bert's code reads it.
  --format=savedmodel   a SavedModel whose serving signature maps input_ids, input_mask,
                        segment_ids to sequence_output and pooled_output.

The output directory is written under a hidden temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

import cli

cli.import_tensorflow()  # quietly, before checkpoints and modeling import it

import checkpoints  # noqa: E402
import modeling  # noqa: E402

FORMATS = ("huggingface", "original", "savedmodel")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The settings of one export; see the module docstring and the flags."""

    checkpoint: str
    format: str
    output_dir: str
    bert_config_file: str | None = None
    vocab_file: str | None = None
    do_lower_case: bool | None = None  # None: from the data's metadata, else the vocabulary
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"--format={self.format}: expected one of {', '.join(FORMATS)}")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export(config: ExportConfig) -> list[str]:
    """Loads the checkpoint into a model and writes it in `config.format`.

    Returns:
        The names of the files written into `config.output_dir`.

    Raises:
        ValueError: naming the flag and the problem: no checkpoint, no config or vocabulary
            to be found, weights that do not fit the config, a non-empty output directory.
    """
    checkpoints.check_output_dir(config.output_dir, config.overwrite)  # before the work
    source = checkpoints.resolve_init_checkpoint(config.checkpoint, flag="--checkpoint")
    config_file = config.bert_config_file or source.config_path
    if not config_file:
        raise ValueError(
            f"--checkpoint={config.checkpoint}: no bert_config.json or config.json beside "
            "it; name the model's config with --bert_config_file"
        )
    bert_config = checkpoints.load_bert_config(config_file)
    vocab_file, do_lower_case = _vocabulary(config, source.path, bert_config)
    _log(f"reading {source.describe()} with the config {config_file}")
    model = modeling.BertPretrainingModel(bert_config)
    model.build_weights()
    report = checkpoints.restore_initial_weights(model, source, bert_config)
    for line in report.log_lines():
        _log(line)
    if report.missing:
        _log(
            f"warning: {len(report.missing)} variable(s) were not in the checkpoint and are "
            "exported with their random initial values"
        )

    if config.format == "huggingface":
        files = checkpoints.export_huggingface(
            model, config.output_dir, vocab_file, do_lower_case, overwrite=config.overwrite
        )
    elif config.format == "original":
        if bert_config.hidden_act == "gelu_exact":
            _log(
                "warning: hidden_act 'gelu_exact' (the erf GELU) is not known to the original "
                "release's code, which computes only its tanh form 'gelu'"
            )
        files = checkpoints.export_original(
            model, config.output_dir, vocab_file, overwrite=config.overwrite
        )
    else:
        files = checkpoints.export_savedmodel(
            model, config.output_dir, vocab_file, overwrite=config.overwrite
        )
    _log(f"wrote {config.format} to {config.output_dir}: {', '.join(files)}")
    return files


def _vocabulary(
    config: ExportConfig, checkpoint_path: str, bert_config: modeling.BertConfig
) -> tuple[str | None, bool]:
    """(vocab file, do_lower_case) from the flags, or found beside the checkpoint."""
    found = None if config.vocab_file else checkpoints.find_vocab_beside(checkpoint_path)
    vocab_file = config.vocab_file or (found.vocab_file if found else None)
    if vocab_file is None:
        if config.format == "savedmodel":
            return None, bool(config.do_lower_case)
        raise ValueError(
            f"--checkpoint={config.checkpoint}: no vocab.txt beside it and none named by its "
            f"training data's metadata; --format={config.format} needs the vocabulary: pass "
            "--vocab_file"
        )
    if not os.path.isfile(vocab_file):
        raise ValueError(f"--vocab_file={vocab_file}: no such file")
    if found:
        _log(f"vocabulary: {vocab_file} (found via {found.found_in})")
    if config.do_lower_case is not None:
        return vocab_file, config.do_lower_case
    if found and found.do_lower_case is not None:
        _log(f"do_lower_case={found.do_lower_case}, as the training data was made")
        return vocab_file, found.do_lower_case
    do_lower_case = checkpoints.infer_do_lower_case(checkpoints.read_vocab(vocab_file))
    _log(
        f"do_lower_case={do_lower_case}: the vocabulary has "
        + ("no upper-case letters (uncased)" if do_lower_case else "upper-case letters (cased)")
        + "; --do_lower_case / --nodo_lower_case sets it"
    )
    return vocab_file, do_lower_case


# ---------------------------------------------------------------------------------------
# Command line


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "checkpoint",
        None,
        "The weights: a checkpoint prefix or training output directory (its newest "
        "checkpoint), an original BERT checkpoint, or a Hugging Face model directory.",
    )
    flags.DEFINE_enum("format", None, list(FORMATS), "What to write.")
    flags.DEFINE_string("output_dir", None, "The directory to create.")
    flags.DEFINE_string(
        "bert_config_file",
        None,
        "The model's bert_config.json (or a Hugging Face config.json); default: the one "
        "beside the checkpoint.",
    )
    flags.DEFINE_string(
        "vocab_file",
        None,
        "The model's vocab.txt; default: the one beside the checkpoint, or the one its "
        "training data was made with.",
    )
    flags.DEFINE_bool(
        "do_lower_case",
        None,
        "Whether the tokenizer lower-cases (uncased model); default: as the training data "
        "was made, else true when the vocabulary has no upper-case letters.",
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --output_dir.")


def config_from_flags() -> ExportConfig:
    from absl import flags

    FLAGS = flags.FLAGS
    missing = [f"--{n}" for n in ("checkpoint", "format", "output_dir") if not FLAGS[n].value]
    if missing:
        raise ValueError(f"missing required flag(s): {', '.join(missing)}")
    names = [field.name for field in dataclasses.fields(ExportConfig)]
    return ExportConfig(**{name: FLAGS[name].value for name in names})


def main(argv: Sequence[str]) -> int:
    import tensorflow as tf
    from absl import logging

    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        export(config_from_flags())
    except (ValueError, OSError, tf.errors.OpError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        _log(f"error: {message}")
        return 1
    return 0


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
