"""Tests of training.py: replica and accumulation equivalence, precision, XLA, resume,
eval, the NaN guard, errors."""

import dataclasses
import json
import os
import shutil
import signal
import types

import conftest
import numpy as np
import pytest
import tensorflow as tf
from train_workspace import PRED, SEQ, make_workspace, tiny_config

import create_pretraining_data as cpd
import distribute
import input_pipeline
import modeling
import run_pretraining_gpu as rp
import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def pack_without_filler_rows(monkeypatch):
    """Uncompiled steps pack the real tokens (modeling.TokenPacking), rounded up to 64 rows
    by default: all of these small batches. A multiple of 1 makes them skip their padding,
    so that the equivalence tests below (replicas, accumulation, resuming) cover it."""
    monkeypatch.setattr(modeling, "PACKED_ROWS_MULTIPLE", 1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("train"))


def strategy_over(num_replicas):
    return conftest.mirrored_strategy(num_replicas)


def make_config(workspace, output_dir, **overrides):
    values = dict(
        input_file=workspace["data"],
        output_dir=str(output_dir),
        bert_config_file=workspace["configs"]["nodrop"],
        do_train=True,
        max_seq_length=SEQ,
        max_predictions_per_seq=PRED,
        batch_size=4,
        eval_batch_size=3,
        learning_rate=1e-3,
        num_train_steps=50,
        num_warmup_steps=2,
        save_checkpoints_steps=1000,
        log_every_n_steps=1,
        seed=7,
        # XLA compiles each new model for seconds; the tests that are about XLA say so.
        xla=False,
        shuffle_buffer=1000,
    )
    values.update(overrides)
    return training.TrainConfig(**values)


def run_steps(workspace, num_replicas, batch_size, steps, init_weights=None, **overrides):
    """Builds a Trainer on `num_replicas` replicas and runs `steps` training steps."""
    config = make_config(
        workspace, workspace["root"] / "unused", batch_size=batch_size, **overrides
    )
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    trainer = training.Trainer(strategy_over(num_replicas), bert_config, config)
    if init_weights is not None:
        for variable, value in zip(trainer.variables, init_weights):
            variable.assign(value)
    global_batch = batch_size * num_replicas * config.gradient_accumulation_steps
    dataset = input_pipeline.train_dataset(
        [workspace["data"]], global_batch, SEQ, PRED, seed=config.seed, shuffle_buffer=1000
    )
    iterator = iter(dataset)
    metrics = [{k: float(v) for k, v in trainer.train_step(iterator).items()} for _ in range(steps)]
    return trainer, metrics


def initial_weights(workspace):
    """The initial weights of a model built with the test's seed."""
    config = make_config(workspace, workspace["root"] / "unused")
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    trainer = training.Trainer(strategy_over(1), bert_config, config)
    return [v.numpy() for v in trainer.variables]


def test_two_replicas_train_exactly_like_one_device_with_twice_the_batch(workspace):
    start = initial_weights(workspace)
    one, one_metrics = run_steps(workspace, 1, batch_size=8, steps=4, init_weights=start)
    two, two_metrics = run_steps(workspace, 2, batch_size=4, steps=4, init_weights=start)
    for a, b in zip(one_metrics, two_metrics):
        for key in ("mlm_loss_sum", "mlm_count", "nsp_loss_sum", "grad_norm_sum", "learning_rate"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
    assert_trained_alike(one, two, start)
    # Both copies of every mirrored variable are identical.
    for variable in two.optimizer.model_variables:
        first, second = two.strategy.experimental_local_results(variable)
        np.testing.assert_array_equal(first.numpy(), second.numpy())
    # Sanity of the set-up that makes this test sensitive: the two halves of a global
    # batch hold different numbers of masked tokens (so per-replica normalisation would
    # give another gradient), and the norm reported is the global one, > the clip norm
    # on the first step (a doubled or halved gradient would show in it).
    batch = next(iter(input_pipeline.train_dataset([workspace["data"]], 8, SEQ, PRED, seed=7)))
    halves = batch["masked_lm_weights"].numpy().reshape(2, 4, PRED).sum(axis=(1, 2))
    assert halves[0] != halves[1]
    assert two_metrics[0]["grad_norm_sum"] > 1.0


def test_loss_falls(workspace):
    start = initial_weights(workspace)
    _, metrics = run_steps(
        workspace, 2, batch_size=8, steps=120, init_weights=start,
        learning_rate=3e-3, num_train_steps=1000, num_warmup_steps=5,
    )  # fmt: skip
    losses = [(m["mlm_loss_sum"] / m["mlm_count"]) for m in metrics]
    # From ln(305) = 5.72 (uniform guessing) to clearly below: a model that does not
    # learn stays within ~0.05 of it (the noise of 10-step means of ~50 masked tokens).
    assert np.mean(losses[:3]) > 5.6
    assert np.mean(losses[-10:]) < np.mean(losses[:3]) - 0.3, losses


def test_eval_metrics_equal_a_numpy_computation(workspace):
    config = make_config(workspace, workspace["root"] / "eval", eval_batch_size=4)
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    trainer = training.Trainer(strategy_over(2), bert_config, config)
    # Perturb the weights so the model predicts something.
    rng = np.random.default_rng(0)
    for variable in trainer.variables:
        variable.assign(variable.numpy() + rng.normal(0, 0.05, variable.shape))
    results = trainer.evaluate([workspace["data"]], max_eval_steps=0)

    rows = list(tf.data.TFRecordDataset(workspace["data"]))
    batch = next(iter(input_pipeline.eval_dataset([workspace["data"]], len(rows), SEQ, PRED)))
    outputs = trainer.model(batch, training=False)
    mlm_logits = outputs["mlm_logits"].numpy().astype(np.float64)
    nsp_logits = outputs["nsp_logits"].numpy().astype(np.float64)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ids = batch["masked_lm_ids"].numpy()
    weights = batch["masked_lm_weights"].numpy()
    token_logp = np.take_along_axis(log_softmax(mlm_logits), ids[..., None], -1)[..., 0]
    labels = batch["next_sentence_labels"].numpy()
    nsp_logp = log_softmax(nsp_logits)[np.arange(len(labels)), labels]
    expected = {
        "masked_lm_loss": -(token_logp * weights).sum() / weights.sum(),
        "masked_lm_accuracy": ((mlm_logits.argmax(-1) == ids) * weights).sum() / weights.sum(),
        "next_sentence_loss": -nsp_logp.mean(),
        "next_sentence_accuracy": (nsp_logits.argmax(-1) == labels).mean(),
    }
    assert len(rows) % 8 != 0  # the last global batch is padded
    assert results["eval_examples"] == len(rows)
    for key, value in expected.items():
        np.testing.assert_allclose(results[key], value, rtol=1e-5, err_msg=key)
    assert 0 < results["masked_lm_accuracy"] < 1


def interrupt_after(monkeypatch, steps, signum=signal.SIGINT):
    """Makes the training loop receive a real signal once `steps` steps have run."""
    original = training.Trainer.train_steps
    calls = {"steps": 0}

    def train_steps(self, iterator, num_steps):
        result = original(self, iterator, num_steps)
        before = calls["steps"]
        calls["steps"] += int(num_steps)
        if before < steps <= calls["steps"]:
            signal.raise_signal(signum)
        return result

    monkeypatch.setattr(training.Trainer, "train_steps", train_steps)
    return calls


@pytest.mark.parametrize("xla", [False, True])
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(
    workspace, tmp_path, monkeypatch, xla
):
    overrides = dict(
        bert_config_file=workspace["configs"]["drop"],  # dropout on
        num_train_steps=8,
        save_checkpoints_steps=3,
        batch_size=4,
        xla=xla,
    )
    straight = make_config(workspace, tmp_path / "straight", **overrides)
    training.train_and_evaluate(straight, strategy=strategy_over(2))

    resumed = make_config(workspace, tmp_path / "resumed", **overrides)
    with monkeypatch.context() as m:
        interrupt_after(m, 5)
        training.train_and_evaluate(resumed, strategy=strategy_over(2))
    assert tf.train.latest_checkpoint(resumed.output_dir).endswith("model.ckpt-5")
    training.train_and_evaluate(resumed, strategy=strategy_over(2))
    final = {}
    for name in ("straight", "resumed"):
        path = tf.train.latest_checkpoint(str(tmp_path / name))
        assert path.endswith("model.ckpt-8")
        reader = tf.train.load_checkpoint(path)
        final[name] = {
            key: reader.get_tensor(key)
            for key in reader.get_variable_to_shape_map()
            if key.startswith(("model/", "optimizer/")) and "OPTIMIZER_SLOT" not in key
        }
    assert final["straight"].keys() == final["resumed"].keys()
    # Every weight is in the checkpoint: embeddings 5, 16 per layer, pooler 2, MLM head 5,
    # NSP head 2 — and as many Adam m and v slots.
    model_keys = [key for key in final["straight"] if key.startswith("model/")]
    assert len(model_keys) == 5 + 16 * 2 + 2 + 5 + 2
    assert len(final["straight"]) == 3 * len(model_keys)
    assert any("optimizer/" in key for key in final["straight"])
    for key, value in final["straight"].items():
        np.testing.assert_array_equal(value, final["resumed"][key], err_msg=key)


def test_data_that_does_not_fit_the_model_is_refused(workspace, tmp_path):
    # Both settings wrong at once: both reported in one error.
    config = make_config(workspace, tmp_path / "x", max_seq_length=64, max_predictions_per_seq=7)
    with pytest.raises(input_pipeline.DataMismatchError) as info:
        training.train_and_evaluate(config, strategy=strategy_over(1))
    message = str(info.value)
    assert "max_seq_length=32 but --max_seq_length is 64" in message
    assert "max_predictions_per_seq=5 but --max_predictions_per_seq is 7" in message
    assert message.count(workspace["data"]) == 2
    # A model whose vocabulary is smaller than the data's: the error names the
    # vocabulary the data was made with and both sizes, not "change vocab_size".
    small = tmp_path / "small_vocab.json"
    small.write_text(json.dumps(dict(tiny_config(), vocab_size=300)))
    config = make_config(workspace, tmp_path / "x", bert_config_file=str(small))
    with pytest.raises(input_pipeline.DataMismatchError) as info:
        training.train_and_evaluate(config, strategy=strategy_over(1))
    message = str(info.value)
    assert f"made with the vocabulary {workspace['vocab']} (305 tokens)" in message
    assert "vocab_size=300" in message
    assert not os.path.exists(tmp_path / "x")  # refused before anything was written


def test_sequence_settings_default_to_the_data_and_a_padded_vocabulary_trains(
    workspace, tmp_path, capsys
):
    # No --max_seq_length / --max_predictions_per_seq: taken from the data's metadata.
    # vocab_size 312 (a multiple of 8) for the data's 305 tokens: rows 305-311 are padding.
    padded = tmp_path / "padded.json"
    padded.write_text(json.dumps(dict(tiny_config(), vocab_size=312)))
    config = make_config(
        workspace, tmp_path / "out", bert_config_file=str(padded), max_seq_length=None,
        max_predictions_per_seq=None, num_train_steps=2,
    )  # fmt: skip
    results = training.train_and_evaluate(config, strategy=strategy_over(1))
    err = capsys.readouterr().err
    assert "sequences of 32 with 5 predictions" in err
    assert "embedding rows 305-311 are padding that no example uses" in err
    assert np.isfinite(results["train"]["loss"])
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["max_seq_length"] == SEQ and saved["max_predictions_per_seq"] == PRED


def test_missing_input_files(workspace, tmp_path):
    config = make_config(workspace, tmp_path / "x", input_file=str(tmp_path / "nope*.tfrecord"))
    with pytest.raises(FileNotFoundError, match="nope"):
        training.train_and_evaluate(config, strategy=strategy_over(1))


def test_more_gpus_than_visible_is_an_error():
    visible = len(tf.config.list_physical_devices("GPU"))
    with pytest.raises(ValueError) as info:
        distribute.make_strategy(num_gpus=visible + 1)
    assert "--cpu_replicas" in str(info.value)
    assert (f"only {visible} GPU" if visible else "no GPU is visible") in str(info.value)


def test_flags_are_validated():
    with pytest.raises(ValueError, match="--batch_size=0"):
        training.TrainConfig(
            input_file="x", output_dir="o", bert_config_file="c", do_train=True, batch_size=0
        )
    with pytest.raises(ValueError, match="exclude each other"):
        training.TrainConfig(input_file="x", output_dir="o", bert_config_file="c", do_train=True,
                       num_gpus=2,
                       cpu_replicas=2)  # fmt: skip


def copy_data(workspace, directory, name):
    """A copy of the workspace's training file (and its metadata) as directory/name."""
    directory.mkdir(exist_ok=True)
    path = directory / name
    shutil.copy(workspace["data"], path)
    shutil.copy(cpd.metadata_path(workspace["data"]), cpd.metadata_path(str(path)))
    return str(path)


def save_weights(workspace, directory, step, **bert_overrides):
    """A checkpoint of freshly initialized weights at `step`, as this tool writes them."""
    path = directory / "bert_config.json"
    directory.mkdir(exist_ok=True)
    path.write_text(json.dumps(dict(tiny_config(), **bert_overrides)))
    config = make_config(workspace, directory, bert_config_file=str(path))
    trainer = training.Trainer(strategy_over(1), modeling.BertConfig.from_json_file(path), config)
    trainer.step.assign(step)
    checkpoint = tf.train.Checkpoint(model=trainer.model, step=trainer.step)
    manager = tf.train.CheckpointManager(
        checkpoint, str(directory), 1, checkpoint_name="model.ckpt"
    )
    return manager.save(checkpoint_number=step)


def run_main(monkeypatch, config, num_replicas=2):
    """The real `main`, in this process: flags replaced by `config`, the shared strategy."""
    monkeypatch.setattr(rp, "config_from_flags", lambda: config)
    monkeypatch.setattr(rp, "flags_were_given", lambda *names: True)  # leave absl logging be
    return rp.main([])


def test_copy_file_never_truncates_and_replaces_whole(tmp_path):
    source = tmp_path / "bert_config.json"
    source.write_text('{"hidden_size": 32}')
    (tmp_path / "link.json").symlink_to(source)
    training._copy_file(str(source), str(source))
    training._copy_file(str(tmp_path / "link.json"), str(tmp_path / "." / "bert_config.json"))
    assert source.read_text() == '{"hidden_size": 32}'  # tf.io.gfile.copy would leave ""
    target = tmp_path / "out.json"
    target.write_text("an older, longer config")
    training._copy_file(str(source), str(target))
    assert target.read_text() == '{"hidden_size": 32}'
    assert sorted(os.listdir(tmp_path)) == ["bert_config.json", "link.json", "out.json"]


def test_resume_refuses_changed_settings_and_allows_another_replica_count(
    workspace, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    # Resuming with --bert_config_file=out/bert_config.json --output_dir=out: the config
    # is the very file the run copies it to.
    bert_config = out / "bert_config.json"
    bert_config.write_text(json.dumps(tiny_config()))
    data = copy_data(workspace, tmp_path / "data", "train-0.tfrecord")
    settings = dict(
        input_file=str(tmp_path / "data" / "train-*.tfrecord"),
        bert_config_file=str(bert_config),
        num_train_steps=3,
        do_eval=True,
        max_eval_steps=1,
    )
    config = make_config(workspace, out, batch_size=8, **settings)  # 8 × 1 replica
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        results = training.train_and_evaluate(config, strategy=strategy_over(1))
    # Stopped by Ctrl-C: no eval of a half-trained model.
    assert results["stopped_by_signal"] == signal.SIGINT and "eval" not in results
    assert not (out / "eval_results.txt").exists()
    assert tf.train.latest_checkpoint(str(out)).endswith("model.ckpt-2")
    assert json.loads(bert_config.read_text()) == tiny_config()

    def refusal(num_replicas, **changes):
        changed = make_config(workspace, out, **dict(settings, batch_size=8, **changes))
        with pytest.raises(ValueError) as info:
            training.train_and_evaluate(changed, strategy=strategy_over(num_replicas))
        message = str(info.value)
        assert "Use the same flags" in message and f"--init_checkpoint={out}" in message
        return message

    message = refusal(2)
    assert (
        "effective batch (--batch_size × replicas × --gradient_accumulation_steps): 8 "
        "(8 × 1 × 1) then, 16 (8 × 2 × 1) now" in message
    )
    # XLA rounds differently (and draws other dropout masks on CPUs): a change of mode is
    # refused too.
    assert "--xla: False then, True now" in refusal(1, xla=True)
    assert "--num_train_steps: 3 then, 5 now" in refusal(1, num_train_steps=5)
    # A new shard matching the same glob would move the saved input position.
    added = copy_data(workspace, tmp_path / "data", "train-1.tfrecord")
    message = refusal(1)
    assert f"training files (--input_file): 1 file(s) then, 2 now; added: {added}" in message
    os.remove(added)

    # The same global batch on 2 replicas continues the run: the input yields global batches.
    # --xla not given: the run keeps its mode (no XLA), though fp32 would default to XLA.
    capsys.readouterr()
    config = make_config(workspace, out, batch_size=4, **dict(settings, xla=None))  # 4 × 2
    results = training.train_and_evaluate(config, strategy=strategy_over(2))
    err = capsys.readouterr().err
    assert "no XLA (as the resumed run)" in err
    assert "resumed from" in err
    assert "resuming with 2 replica(s); the run used 1 so far" in err
    assert "stopped_by_signal" not in results and results["eval"]["global_step"] == 3
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["global_batch_size"] == 8 and saved["num_replicas"] == 2
    assert saved["train_files"] == [os.path.abspath(data)]
    assert json.loads(bert_config.read_text()) == tiny_config()

    # Once more: already at num_train_steps, so it only evaluates and writes nothing else.
    before = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}
    results = training.train_and_evaluate(config, strategy=strategy_over(2))
    err = capsys.readouterr().err
    assert "already at step 3 of 3: nothing to train" in err and "training steps" not in err
    assert results["train"] == {} and results["eval"]["global_step"] == 3
    after = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}
    changed = {name for name in after if before.get(name) != after[name]}
    # The eval results and the eval summaries (out/eval/) only: no training event file,
    # train_config.json and the checkpoints untouched.
    assert changed == {"eval_results.txt", "eval_results.jsonl", "eval"}


def test_cpu_bf16_matmul_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    line = "flags\t\t: fpu sse2 avx2 avx512f {}avx512_vnni\n"
    cases = (("", ""), ("amx_bf16 ", "amx"), ("avx512_bf16 ", "avx512_bf16"),
             ("avx512_bf16 amx_tile amx_bf16 ", "amx"))  # fmt: skip
    for extra, expected in cases:
        cpuinfo.write_text("processor\t: 0\n" + line.format(extra) + "bugs\t\t: amx_bf16\n")
        assert training.cpu_bf16_matmul(str(cpuinfo)) == expected, extra
    assert training.cpu_bf16_matmul(str(tmp_path / "absent")) == ""
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")  # aarch64's
    assert training.cpu_bf16_matmul(str(cpuinfo)) == ""


@pytest.mark.parametrize(
    "precision, device, cpu_bf16, hidden_size, expected",
    [
        ("fp32", "CPU", "", None, True),  # e.g. AVX2 only: XLA wins (tiny) or ties
        ("fp32", "CPU", "", 768, True),  # (BERT-base not measured there)
        ("fp32", "CPU", "avx512_bf16", None, True),  # e.g. AMD Zen 4: XLA wins at tiny
        ("fp32", "CPU", "avx512_bf16", 512, True),  # BERT-small: even
        ("fp32", "CPU", "avx512_bf16", 768, False),  # BERT-base: packed, uncompiled wins
        ("fp32", "CPU", "avx512_bf16", 1024, False),
        ("fp32", "CPU", "amx", 128, False),  # TensorFlow's oneDNN matmuls win
        ("fp16", "CPU", "amx", 768, True),  # not measured there: XLA stays on
        ("fp16", "CPU", "avx512_bf16", 768, True),
        ("bf16", "CPU", "", 768, True),  # no bf16 matrix instructions: XLA's f32 matmuls
        ("bf16", "CPU", "avx512_bf16", 128, False),  # oneDNN uses them, XLA does not
        ("bf16", "CPU", "amx", None, False),
        ("bf16", "GPU", "amx", 768, True),
        ("fp32", "GPU", "amx", 1024, True),
    ],
)
def test_xla_default_is_off_only_where_uncompiled_was_faster(
    precision, device, cpu_bf16, hidden_size, expected
):
    devices = [f"/job:localhost/replica:0/task:0/device:{device}:{i}" for i in range(2)]
    xla, reason = training.default_xla(
        precision, devices, cpu_bf16=cpu_bf16, hidden_size=hidden_size
    )
    assert xla is expected
    assert bool(reason) is not expected  # a reason is given when it is off


def test_xla_default_takes_the_models_size(workspace, tmp_path, monkeypatch):
    """fp32 on a CPU with AVX512-BF16: XLA off from PACKED_BEATS_XLA_HIDDEN_SIZE on (set
    here to the test model's size), on below it; in the Trainer and in a run's resolution."""
    monkeypatch.setattr(training, "cpu_bf16_matmul", lambda: "avx512_bf16")
    config = make_config(workspace, tmp_path / "out", xla=None)
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    hidden = bert_config.hidden_size
    one_worker = types.SimpleNamespace(strategy=strategy_over(1), num_workers=1)
    for threshold, expected in ((hidden, False), (hidden + 1, True)):
        monkeypatch.setattr(training, "PACKED_BEATS_XLA_HIDDEN_SIZE", threshold)
        assert training.Trainer(strategy_over(1), bert_config, config).xla is expected
        resolved, reason = training._resolve_xla(config, one_worker, None, hidden)
        assert resolved.xla is expected
        assert ("AVX512-BF16" in reason) is not expected


def test_xla_not_given_is_resolved_for_the_run_and_saved(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "cpu_bf16_matmul", lambda: "amx")
    out = tmp_path / "out"
    config = make_config(
        workspace, out, num_train_steps=1, num_warmup_steps=0, xla=None, precision="bf16"
    )
    training.train_and_evaluate(config, strategy=strategy_over(1))
    why = "no XLA (auto: bf16 on a CPU with bf16 matrix instructions (AMX or AVX512-BF16)"
    assert why in capsys.readouterr().err
    assert json.loads((out / "train_config.json").read_text())["xla"] is False
    # Given, the flag wins; not given in a Trainer built directly, the default decides.
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    for given, expected in ((True, True), (None, False)):
        changed = dataclasses.replace(config, xla=given)
        trainer = training.Trainer(strategy_over(1), bert_config, changed)
        assert trainer.xla is expected
        assert trainer.optimizer.fused is not expected  # the fused Adam kernel without XLA
        sums = {layer.column_sums for layer in trainer.model._flatten_layers()
                if isinstance(layer, (modeling.Dense, modeling.LayerNorm))}  # fmt: skip
        assert sums == {"matmul" if expected else "reduce"}  # XLA on CPUs: by matmul


def test_workers_take_xla_on_only_if_every_worker_would(workspace, tmp_path, monkeypatch):
    cluster = types.SimpleNamespace(strategy=strategy_over(1), num_workers=2)
    calls = []

    def resolve(other, other_asked=False, saved=None, **overrides):
        # `other`: the other worker's mode; `other_asked`: whether it was given --xla.
        def agree(combine, theirs):
            def collective(devices, value):
                calls.append(value)
                return combine(value, int(theirs))

            return collective

        monkeypatch.setattr(distribute, "agree_on_min", agree(min, other))
        monkeypatch.setattr(distribute, "agree_on_max", agree(max, other_asked))
        config = make_config(workspace, tmp_path, **dict(dict(xla=None), **overrides))
        return training._resolve_xla(config, cluster, saved)

    # fp32, flag not given, a CPU without bf16 matmuls: on for this worker, so on only if
    # on for the other too.
    monkeypatch.setattr(training, "cpu_bf16_matmul", lambda: "")
    assert resolve(1)[0].xla is True
    resolved, reason = resolve(0)
    assert resolved.xla is False and reason == "auto: off on another worker of the cluster"
    assert resolve(0, xla=False)[0].xla is False
    # --xla on one worker, XLA off on another: both refuse. Here given --xla, the other
    # off; then here off by default (bf16 on a CPU with bf16 matmuls), the other given it.
    with pytest.raises(ValueError, match="give every worker the same --xla or --noxla"):
        resolve(0, xla=True)
    monkeypatch.setattr(training, "cpu_bf16_matmul", lambda: "amx")
    with pytest.raises(ValueError, match="give every worker the same --xla or --noxla"):
        resolve(1, other_asked=True, precision="bf16")
    monkeypatch.setattr(training, "cpu_bf16_matmul", lambda: "")
    # Resuming, every worker reads the mode of the run from its shared output dir (a
    # saved value that is not a mode is ignored).
    resolved, reason = resolve(1, saved={"xla": True})
    assert resolved.xla is True and reason == "as the resumed run"
    assert resolve(1, saved={"xla": None})[1] == "auto"
    # Every worker took part in both comparisons each time, whatever its flags.
    assert len(calls) == 2 * 7


def test_first_step_is_timed_apart_from_the_rate(workspace, tmp_path, monkeypatch, capsys):
    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(training, "time", types.SimpleNamespace(time=lambda: clock.now))
    original = training.Trainer.train_steps
    calls = []

    def train_steps(self, iterator, num_steps):
        # Tracing and compiling make step 1 slow; then 0.5 s per step.
        clock.now += 100.0 if not calls else 0.5 * int(num_steps)
        calls.append(int(num_steps))
        return original(self, iterator, num_steps)

    monkeypatch.setattr(training.Trainer, "train_steps", train_steps)
    config = make_config(workspace, tmp_path / "out", num_train_steps=5, log_every_n_steps=3)
    results = training.train_and_evaluate(config, strategy=strategy_over(1))
    err = capsys.readouterr().err
    assert "first step took 100.0 s (tracing and compiling included)" in err
    # Steps 2 and 3 took 0.5 s each: 2 steps/s, 2 steps left, ETA 1 s (not 3/101 steps/s).
    (line,) = [line for line in err.splitlines() if line.startswith("step 3/5")]
    assert line.endswith("8.0 examples/s 2.00 steps/s  ETA 0:00:01")  # global batch 4
    assert results["train"]["steps_per_sec"] == 2.0
    # The first call runs one step alone; then calls run to the next log boundary.
    assert calls == [1, 2, 2]


def test_main_exit_status_after_a_signal_and_on_checkpoint_errors(
    workspace, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "stopped"
    config = make_config(workspace, out, do_eval=True, num_train_steps=4)
    with monkeypatch.context() as m:
        interrupt_after(m, 1, signal.SIGTERM)
        assert run_main(m, config, num_replicas=1) == 128 + signal.SIGTERM == 143
    assert tf.train.latest_checkpoint(str(out)).endswith("model.ckpt-1")
    assert not (out / "eval_results.txt").exists()
    assert "eval skipped" in capsys.readouterr().err

    # Checkpoints of a 1-layer model in the output dir, resumed with the 2-layer config:
    # a short error (TensorFlow's names every variable with its values), no traceback.
    save_weights(workspace, tmp_path / "one_layer", step=2, num_hidden_layers=1)
    config = make_config(workspace, tmp_path / "one_layer", num_train_steps=4)
    assert run_main(monkeypatch, config) == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "model.ckpt-2 does not fit this model" in line and len(line) < 1000
    assert "--bert_config_file=" in line
    # A corrupt checkpoint names its path.
    (tmp_path / "one_layer" / "model.ckpt-2.index").write_bytes(b"garbage")
    assert run_main(monkeypatch, config) == 1
    assert "model.ckpt-2 cannot be read" in capsys.readouterr().err
    # Corrupt data that its metadata vouches for fails while reading: an error, exit 1.
    corrupt = copy_data(workspace, tmp_path / "corrupt", "eval.tfrecord")
    with open(corrupt, "r+b") as f:
        f.seek(20)
        f.write(b"\xff" * 8)
    config = make_config(
        workspace, tmp_path / "eval", do_train=False, do_eval=True, eval_input_file=corrupt,
        init_checkpoint=save_weights(workspace, tmp_path / "weights", step=1),
    )  # fmt: skip
    assert run_main(monkeypatch, config) == 1
    assert "error: " in capsys.readouterr().err


def test_init_checkpoint_may_be_a_directory_and_bad_paths_are_named(workspace, tmp_path, capsys):
    save_weights(workspace, tmp_path / "previous", step=7)
    config = make_config(
        workspace, tmp_path / "eval", do_train=False, do_eval=True, max_eval_steps=1,
        init_checkpoint=str(tmp_path / "previous"),
    )  # fmt: skip
    results = training.train_and_evaluate(config, strategy=strategy_over(1))
    assert results["eval"]["global_step"] == 7
    assert f"evaluating {tmp_path / 'previous' / 'model.ckpt-7'}" in capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    for path, fragment in [
        (tmp_path / "nothing" / "model.ckpt-5", "no checkpoint there"),
        (tmp_path / "empty", "the directory holds no checkpoint"),
    ]:
        config = make_config(workspace, tmp_path / "new", init_checkpoint=str(path))
        with pytest.raises(ValueError) as info:
            training.train_and_evaluate(config, strategy=strategy_over(1))
        message = str(info.value)
        assert f"--init_checkpoint={path}: {fragment}" in message
        assert "expected one of: a checkpoint prefix of this tool" in message
        assert not (tmp_path / "new").exists()  # refused before anything was written


def test_errors_about_the_default_eval_files_name_input_file(workspace, tmp_path):
    eval_only = dict(do_train=False, do_eval=True, init_checkpoint=None)
    config = make_config(workspace, tmp_path / "o", input_file=str(tmp_path / "no*"), **eval_only)
    with pytest.raises(FileNotFoundError) as info:
        training.train_and_evaluate(config, strategy=strategy_over(1))
    assert str(info.value).startswith("--input_file: no TFRecord files match")
    # Files whose metadata says they are empty: named, with the flag, before any work
    # (training on them used to wait forever for a first batch).
    empty = copy_data(workspace, tmp_path / "data", "empty.tfrecord")
    meta = json.loads(open(cpd.metadata_path(empty)).read())
    with open(cpd.metadata_path(empty), "w") as f:
        json.dump(dict(meta, num_instances=0), f)
    for overrides in (eval_only, dict(do_train=True)):
        config = make_config(workspace, tmp_path / "o", input_file=empty, **overrides)
        with pytest.raises(input_pipeline.EmptyDataError) as info:
            training.train_and_evaluate(config, strategy=strategy_over(1))
        assert str(info.value).startswith("--input_file: no instances") and empty in str(info.value)
    assert not (tmp_path / "o").exists()


def test_loss_falls_on_the_bundled_sample(tmp_path):
    # The demo's own files: sample_text.txt, vocab.txt and bert_config.json.
    data = str(tmp_path / "sample.tfrecord")
    options = cpd.DataOptions(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=2)
    spec = cpd.TokenizerSpec(os.path.join(ROOT, "vocab.txt"))
    cpd.create_pretraining_data(
        os.path.join(ROOT, "sample_text.txt"), data, spec, options, log=None
    )
    config = training.TrainConfig(
        input_file=data, output_dir=str(tmp_path / "out"),
        bert_config_file=os.path.join(ROOT, "bert_config.json"), do_train=True,
        max_seq_length=64, max_predictions_per_seq=10, batch_size=8, learning_rate=1e-3,
        num_train_steps=1000, num_warmup_steps=10, seed=3,
    )  # fmt: skip
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    trainer = training.Trainer(strategy_over(2), bert_config, config)
    iterator = iter(input_pipeline.train_dataset([data], 16, 64, 10, seed=3))
    losses = []
    for _ in range(60):
        m = trainer.train_step(iterator)
        losses.append(float(m["mlm_loss_sum"]) / float(m["mlm_count"]))
    # From about ln(2000) = 7.6 (uniform over the vocabulary) to well below.
    assert np.mean(losses[:3]) > 7.0
    assert np.mean(losses[-10:]) < np.mean(losses[:3]) - 1.0, losses


# ----------------------------------------------------------------------------------------
# Speed features: accumulation, XLA, steps per loop, precision, LAMB


def assert_trained_alike(one, two, start, rtol=1e-5):
    """Weights and slots of two trainers agree to float32 summation-order rounding.

    The two runs compute the same float32 operations on the same rows, except that the
    weight gradients are sums over the batch split in another way (per replica, per
    micro-batch), so they differ by reordering: at most n·u·Σ|terms| with n = 8 rows × 32
    positions and u = 2^-24, about 1.5e-5 of the terms' scale. Clipping and Adam's
    normalisation m/(sqrt(v) + eps) keep a step's relative error at that level (Adam is
    scale-invariant, and eps damps the elements whose gradient is near 0), and each of
    the few steps moves a weight by at most ~3·lr = 3e-3: rtol 1e-5 on weights of
    magnitude ~0.02-1 with an atol of 1e-7 (3e-3 × a few 1e-5) for the small ones.
    A per-replica normalisation or a missing micro-batch changes the step by percents.
    """
    for a, b, initial in zip(one.variables, two.variables, start):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=1e-7, err_msg=a.path)
        assert not np.array_equal(a.numpy(), initial), f"{a.path} did not train"
    # The slots are sums of per-example terms too, but their rounding is relative to the
    # TERMS, not to the result where the terms cancel. The worst case is the
    # next-sentence output bias: each example adds (p − y)/N, up to 1/N, and they cancel
    # to ~1e-3 of their sum (C = Σ|terms| / |Σ terms| ≈ 800 was seen), so its m may differ
    # by n·u·C ≈ 8 × 6e-8 × 800 ≈ 4e-4 of its size (2e-5 was seen on a Xeon); v = Σ g²
    # doubles that. Hence atol 4e-4 (m) and 8e-4 (v) of each slot's largest element; the
    # key biases, with an exactly zero gradient in theory, hold ~1e-15 of rounding.
    for slots, relative in ((zip(one.optimizer.m, two.optimizer.m), 4e-4),
                            (zip(one.optimizer.v, two.optimizer.v), 8e-4)):  # fmt: skip
        for a, b in slots:
            scale = np.abs(a.numpy()).max()
            np.testing.assert_allclose(
                a.numpy(), b.numpy(), rtol=rtol, atol=relative * scale + 1e-10
            )


@pytest.mark.parametrize(
    "optimizer, xla, replicas, batch_size, micro_batches",
    [("adamw", True, 1, 2, 4), ("lamb", False, 2, 2, 2)],
)
def test_accumulation_trains_like_one_device_with_the_whole_batch(
    workspace, optimizer, xla, replicas, batch_size, micro_batches
):
    # K micro-batches × R replicas × B examples against one device with the 8 examples:
    # the loss is normalised by the counts of the whole effective batch, so the
    # gradients match. With XLA and one replica, the micro-batch loop runs inside the
    # one compiled cluster of the step (the split clusters of several replicas are run
    # by tests/test_train_step_reference.py).
    # Both runs compiled alike: without XLA, AdamW updates through TensorFlow's fused Adam
    # kernel, whose float32 constants differ from the plain form's (AdamWeightDecay._apply).
    start = initial_weights(workspace)
    overrides = dict(optimizer=optimizer, poly_power=0.5, xla=xla)
    one, one_metrics = run_steps(workspace, 1, 8, 3, init_weights=start, **overrides)
    two, two_metrics = run_steps(
        workspace, replicas, batch_size, 3, init_weights=start,
        gradient_accumulation_steps=micro_batches, **overrides,
    )  # fmt: skip
    assert two.xla == xla and two.accumulation == micro_batches
    for a, b in zip(one_metrics, two_metrics):
        for key in ("mlm_loss_sum", "mlm_count", "nsp_loss_sum", "grad_norm_sum"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
        assert b["applied_steps"] == 1 and b["skipped_steps"] == 0
    assert_trained_alike(one, two, start)
    for variable in two.optimizer.model_variables:
        copies = two.strategy.experimental_local_results(variable)
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy.numpy(), copies[0].numpy())
    # The four blocks of 2 examples of a global batch hold different numbers of masked
    # tokens: normalising per micro-batch or replica would give another gradient.
    batch = next(iter(input_pipeline.train_dataset([workspace["data"]], 8, SEQ, PRED, seed=7)))
    quarters = batch["masked_lm_weights"].numpy().reshape(4, 2, PRED).sum(axis=(1, 2))
    assert len(set(quarters)) > 1


def test_steps_per_loop_runs_the_very_same_steps(workspace):
    start = initial_weights(workspace)
    stepwise, _ = run_steps(workspace, 2, 4, 6, init_weights=start)
    config = make_config(workspace, workspace["root"] / "unused")
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    looped = training.Trainer(strategy_over(2), bert_config, config)
    for variable, value in zip(looped.variables, start):
        variable.assign(value)
    iterator = iter(
        input_pipeline.train_dataset([workspace["data"]], 8, SEQ, PRED, seed=7, shuffle_buffer=1000)
    )
    totals = [looped.train_steps([iterator], tf.constant(3, tf.int64)) for _ in range(2)]
    assert [float(t["applied_steps"]) for t in totals] == [3.0, 3.0]
    assert int(looped.step.numpy()) == 6 and int(looped.updates.numpy()) == 6
    # The same ops on the same batches: the same bits.
    for a, b in zip(stepwise.variables, looped.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_bf16_replicas_train_like_one_device_within_bfloat16_rounding(workspace):
    # bfloat16 keeps 8 significant bits (unit roundoff u = 2^-8). One device and two
    # replicas compute every example's forward pass alike; they differ in how the
    # weight gradients of a Dense layer (X^T·dY, rounded to bfloat16 once per replica)
    # are split: each replica's partial sum is rounded, then the partials are added.
    # Hence per step: losses equal up to float32 summation (the first step, same
    # weights) and gradient norms within u relative per rounding, one rounding on each
    # side: 2·u = 2^-7.
    start = initial_weights(workspace)
    overrides = dict(precision="bf16", num_warmup_steps=0)
    one, one_metrics = run_steps(workspace, 1, 8, 2, init_weights=start, **overrides)
    two, two_metrics = run_steps(workspace, 2, 4, 2, init_weights=start, **overrides)
    assert one.model.encoder.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in two.variables + two.optimizer.m)
    np.testing.assert_allclose(
        one_metrics[0]["mlm_loss_sum"], two_metrics[0]["mlm_loss_sum"], rtol=1e-5
    )
    for a, b in zip(one_metrics, two_metrics):
        np.testing.assert_allclose(a["grad_norm_sum"], b["grad_norm_sum"], rtol=2**-7)
    # The first Adam update is lr·m/(sqrt(v)+eps) ≈ lr·3.16·sign(g): rounding can flip
    # only elements whose gradient is within rounding of zero, so the updates agree
    # elementwise except on a few such elements. Bound the share that differ by more
    # than 1% of the step, and the relative norm of the difference (sqrt of twice that
    # share, each flipped element contributing at most (2·step)^2 against step^2).
    updates_one = np.concatenate([(v.numpy() - s).ravel() for v, s in zip(one.variables, start)])
    updates_two = np.concatenate([(v.numpy() - s).ravel() for v, s in zip(two.variables, start)])
    step = np.abs(updates_one).max()
    differ = np.abs(updates_one - updates_two) > 0.01 * step
    assert differ.mean() < 0.02, differ.mean()
    relative = np.linalg.norm(updates_one - updates_two) / np.linalg.norm(updates_one)
    assert relative < 2 * np.sqrt(2 * 0.02), relative


def test_fp16_loss_scaling_skips_overflowing_steps_and_grows_back(workspace, monkeypatch):
    monkeypatch.setattr(training, "LOSS_SCALE_GROWTH_INTERVAL", 2)
    config = make_config(workspace, workspace["root"] / "unused", precision="fp16")
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    trainer = training.Trainer(strategy_over(2), bert_config, config)
    assert trainer.model.encoder.compute_dtype == "float16"
    assert float(trainer.loss_scale.numpy()) == training.INITIAL_LOSS_SCALE
    # A scale of 2^40 overflows float16 (max 65504) in the backward pass at once.
    trainer.loss_scale.assign(2.0**40)
    iterator = iter(input_pipeline.train_dataset([workspace["data"]], 8, SEQ, PRED, seed=7))
    before = [v.numpy() for v in trainer.variables]
    metrics = trainer.train_step(iterator)
    assert float(metrics["skipped_steps"]) == 1 and float(metrics["nonfinite_steps"]) == 0
    assert float(trainer.loss_scale.numpy()) == 2.0**39
    assert int(trainer.nonfinite_streak.numpy()) == 0  # loss scaling, not a NaN alarm
    for variable, value in zip(trainer.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)  # nothing applied
    # From 2^20, halving until the gradients fit (each skipped step halves the scale).
    trainer.loss_scale.assign(2.0**20)
    scales = []
    for _ in range(30):
        metrics = trainer.train_step(iterator)
        scales.append(float(trainer.loss_scale.numpy()))
        if float(metrics["applied_steps"]):
            break
    assert float(metrics["applied_steps"]) == 1, scales
    assert scales[:-1] == [2.0 ** (19 - i) for i in range(len(scales) - 1)]
    # A scale far below overflow: --growth interval (2 here) finite steps double it.
    trainer.loss_scale.assign(4.0)
    trainer.good_steps.assign(0)
    trainer.train_step(iterator)
    assert float(trainer.loss_scale.numpy()) == 4.0
    trainer.train_step(iterator)
    assert float(trainer.loss_scale.numpy()) == 8.0
    assert int(trainer.skipped_steps.numpy()) == len(scales)  # the first step and the halvings
    assert int(trainer.step.numpy()) == len(scales) + 3
    assert int(trainer.updates.numpy()) == 3
    assert all(np.isfinite(v.numpy()).all() for v in trainer.variables)


def test_replicas_draw_different_dropout_masks(workspace):
    # Replica 0 of a 2-replica step draws the mask one device draws at the same step;
    # replica 1 must draw another. Feed both replicas the same rows: the summed loss is
    # then twice one device's loss only if the masks are the same.
    config = make_config(
        workspace, workspace["root"] / "unused", bert_config_file=workspace["configs"]["drop"]
    )
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    rows = next(iter(input_pipeline.train_dataset([workspace["data"]], 4, SEQ, PRED, seed=7)))
    doubled = {name: tf.concat([value, value], 0) for name, value in rows.items()}
    # Large weights: at initialisation the logits are ~0 and the loss ~ln(V) whatever
    # the mask; with these, a different mask changes the loss by percents.
    rng = np.random.default_rng(0)
    losses, weights = {}, None
    for replicas, batch in ((1, rows), (2, doubled)):
        trainer = training.Trainer(strategy_over(replicas), bert_config, config)
        if weights is None:
            weights = [v.numpy() + rng.normal(0, 0.3, v.shape) for v in trainer.variables]
        for variable, value in zip(trainer.variables, weights):
            variable.assign(value)
        iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
        losses[replicas] = float(trainer.train_step(iterator)["mlm_loss_sum"])
    # Equal masks would give 2·loss up to float32 summation order (~1e-6 relative).
    assert abs(losses[2] - 2 * losses[1]) > 1e-3 * losses[1], losses


def test_nan_guard_stops_training_and_keeps_the_last_good_checkpoint(workspace, tmp_path):
    # An absurd learning rate: the first update makes the weights ~1e30, every later
    # forward pass overflows. Those steps are never applied, and after
    # --max_nonfinite_steps of them training stops with an error.
    out = tmp_path / "out"
    config = make_config(
        workspace, out, learning_rate=1e30, num_warmup_steps=0, max_nonfinite_steps=3,
        save_checkpoints_steps=1, num_train_steps=20,
    )  # fmt: skip
    with pytest.raises(training.NonFiniteLossError) as info:
        training.train_and_evaluate(config, strategy=strategy_over(2))
    message = str(info.value)
    assert "3 consecutive steps up to step 4" in message
    assert "--max_nonfinite_steps=3" in message and str(out) in message
    latest = tf.train.latest_checkpoint(str(out))
    # Steps 2 and 3 were skipped (saved weights = step 1's); step 4 tripped the guard
    # before its checkpoint.
    assert latest.endswith("model.ckpt-3")
    reader = tf.train.load_checkpoint(latest)
    weights = [
        reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith("model/") and "OPTIMIZER_SLOT" not in key
    ]
    assert weights and all(np.isfinite(w).all() for w in weights)
    assert int(reader.get_tensor("skipped_steps/.ATTRIBUTES/VARIABLE_VALUE")) == 2


# ----------------------------------------------------------------------------------------
# Evaluation during training, and the data checks a researcher relies on


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eval_during_training_keeps_every_result_and_names_the_best(workspace, tmp_path, capsys):
    held_out = copy_data(workspace, tmp_path / "eval", "held_out.tfrecord")
    out = tmp_path / "out"
    config = make_config(
        workspace, out, do_eval=True, eval_input_file=held_out, num_train_steps=6,
        eval_every_n_steps=2, save_checkpoints_steps=3, max_eval_steps=2, learning_rate=3e-3,
    )  # fmt: skip
    results = training.train_and_evaluate(config, strategy=strategy_over(2))
    # Evals at 2 and 4 during training (each after a checkpoint of its step), and the
    # final one at 6; checkpoints also at 3 (--save_checkpoints_steps).
    records = read_jsonl(out / "eval_results.jsonl")
    assert [r["global_step"] for r in records] == [2, 4, 6]
    assert [r["checkpoint"] for r in records] == [str(out / f"model.ckpt-{s}") for s in (2, 4, 6)]
    assert all(r["held_out"] and r["eval_files"] == [held_out] for r in records)
    assert [r["global_step"] for r in results["evals"]] == [2, 4, 6]
    assert sorted(tf.train.get_checkpoint_state(str(out)).all_model_checkpoint_paths) == sorted(
        str(out / f"model.ckpt-{s}") for s in (2, 3, 4, 6)
    )
    # eval_results.txt: the newest, in the original format.
    newest = dict(line.split(" = ") for line in (out / "eval_results.txt").read_text().splitlines())
    assert newest["global_step"] == "6"
    assert float(newest["masked_lm_loss"]) == pytest.approx(records[-1]["masked_lm_loss"])
    # TensorBoard: one eval point per step.
    steps = sorted(
        event.step
        for name in os.listdir(out / "eval")
        for event in tf.compat.v1.train.summary_iterator(str(out / "eval" / name))
        for value in event.summary.value
        if value.tag == "masked_lm_loss"
    )
    assert steps == [2, 4, 6]
    best = min(records, key=lambda r: r["masked_lm_loss"])
    err = capsys.readouterr().err
    assert f"best eval so far on this eval data: step {best['global_step']}" in err
    assert "not held out" not in err


def test_eval_checkpoint_evaluates_any_checkpoint_without_touching_the_run(
    workspace, tmp_path, capsys
):
    out = tmp_path / "out"
    config = make_config(workspace, out, num_train_steps=4, save_checkpoints_steps=2)
    training.train_and_evaluate(config, strategy=strategy_over(1))
    before = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}
    capsys.readouterr()
    # --do_eval --init_checkpoint=run/model.ckpt-2 inside the run's own directory
    # evaluates that checkpoint (it used to evaluate the newest).
    eval_only = dict(do_train=False, do_eval=True, max_eval_steps=1)
    config = make_config(workspace, out, init_checkpoint=str(out / "model.ckpt-2"), **eval_only)
    results = training.train_and_evaluate(config, strategy=strategy_over(1))
    assert results["eval"]["global_step"] == 2
    assert "not held out" in capsys.readouterr().err  # the default eval data: training data
    # Every checkpoint of the run.
    config = make_config(workspace, out, eval_checkpoint="all", **eval_only)
    results = training.train_and_evaluate(config, strategy=strategy_over(1))
    assert [r["global_step"] for r in results["evals"]] == [2, 4]
    records = read_jsonl(out / "eval_results.jsonl")
    assert [r["global_step"] for r in records] == [2, 2, 4]
    assert all(not r["held_out"] for r in records)
    # Weights differ between the checkpoints, so their results do too.
    assert records[1]["masked_lm_loss"] != records[2]["masked_lm_loss"]
    # The training state is untouched: checkpoints, train_config.json, bert_config.json.
    after = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {"eval_results.txt", "eval_results.jsonl", "eval"}
    with pytest.raises(ValueError, match="--eval_checkpoint evaluates existing checkpoints"):
        make_config(workspace, out, eval_checkpoint="all")


def test_train_and_eval_files_must_not_overlap_and_share_one_vocabulary(workspace, tmp_path):
    data = tmp_path / "data"
    train = copy_data(workspace, data, "train-0.tfrecord")
    config = make_config(
        workspace, tmp_path / "out", input_file=str(data / "*"), eval_input_file=train,
        do_eval=True, num_train_steps=1, num_warmup_steps=0, max_eval_steps=1,
    )  # fmt: skip
    with pytest.raises(input_pipeline.DataMismatchError) as info:
        training.train_and_evaluate(config, strategy=strategy_over(1))
    assert f"share 1 file(s) ({train})" in str(info.value)
    assert "--allow_eval_on_train_files" in str(info.value)
    allowed = dataclasses.replace(config, allow_eval_on_train_files=True)
    assert training.train_and_evaluate(allowed, strategy=strategy_over(1))["eval"]
    # An eval shard made with another vocabulary (its metadata's SHA-256 differs).
    other = copy_data(workspace, tmp_path / "other", "eval.tfrecord")
    meta = json.loads(open(cpd.metadata_path(other)).read())
    meta.update(vocab_sha256="0" * 64, vocab_file="/elsewhere/vocab.txt")
    with open(cpd.metadata_path(other), "w") as f:
        json.dump(meta, f)
    config = dataclasses.replace(config, eval_input_file=other, output_dir=str(tmp_path / "o2"))
    with pytest.raises(input_pipeline.DataMismatchError) as info:
        training.train_and_evaluate(config, strategy=strategy_over(1))
    message = str(info.value)
    assert "different vocabularies" in message and train in message and other in message
    assert "/elsewhere/vocab.txt" in message


def test_resume_refuses_a_data_file_rebuilt_in_place(workspace, tmp_path):
    data = copy_data(workspace, tmp_path / "data", "train.tfrecord")
    out = tmp_path / "out"
    config = make_config(workspace, out, input_file=data, num_train_steps=4)
    with pytest.MonkeyPatch.context() as m:
        interrupt_after(m, 2)
        training.train_and_evaluate(config, strategy=strategy_over(1))
    # The file is made again (another seed) under the same name.
    options = cpd.DataOptions(
        max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=4, random_seed=99
    )
    corpus = str(workspace["root"] / "corpus.txt")
    cpd.create_pretraining_data(
        corpus, data, cpd.TokenizerSpec(workspace["vocab"]), options, log=None
    )
    with pytest.raises(ValueError) as info:
        training.train_and_evaluate(config, strategy=strategy_over(1))
    assert f"{data} changed since the run started" in str(info.value)
    assert "the saved input position would point into other data" in str(info.value)


def test_eval_compiles_with_xla_on_two_replicas(workspace):
    # Each replica's compiled eval trace must capture its own copies of the variables (one
    # trace shared by both replicas made `make pretrain` fail: "Trying to access resource
    # .../replica_1 ... from device CPU:0").
    start = initial_weights(workspace)
    bert_config = modeling.BertConfig.from_json_file(workspace["configs"]["nodrop"])
    results = []
    for xla in (False, True):
        config = make_config(workspace, workspace["root"] / "unused", xla=xla)
        trainer = training.Trainer(strategy_over(2), bert_config, config)
        for variable, value in zip(trainer.variables, start):
            variable.assign(value)
        results.append(trainer.evaluate([workspace["data"]], max_eval_steps=3))
    plain, compiled = results
    assert plain["eval_examples"] == compiled["eval_examples"] > 0
    # XLA fuses the float32 forward pass differently: each logit may move by the forward
    # bound of test_modeling (GAIN·ΣK·u·scale ≈ 7e-4 for this 2-layer, hidden-32 model), a
    # log-softmax by twice that, and so the mean losses by at most 1.5e-3.
    for key in ("masked_lm_loss", "next_sentence_loss"):
        np.testing.assert_allclose(compiled[key], plain[key], atol=1.5e-3, err_msg=key)
