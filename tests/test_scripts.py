"""Tests of the shell scripts in scripts/: create_data.sh, pretrain.sh, pretrain_multinode.sh.

One real run goes end to end on a tiny BERT (hidden 32, 2 layers) on 2 logical CPU
devices: corpus -> sharded data of both phases -> phase 1 -> phase 2 from phase 1's
weights -> eval. The rest is fast: --help, the input checks, the recipes' arithmetic and
the TF_CONFIG through --dry_run, and resuming and stopping through a fake trainer (a
stand-in for run_pretraining_gpu.py that records how it was called and what signals it
received), which tests the scripts' own logic without TensorFlow start-up costs.
"""

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
CREATE = os.path.join(SCRIPTS, "create_data.sh")
PRETRAIN = os.path.join(SCRIPTS, "pretrain.sh")
MULTINODE = os.path.join(SCRIPTS, "pretrain_multinode.sh")

WORDS = [f"w{i}" for i in range(60)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


def settings_read_by(script: str) -> set[str]:
    """The environment variables a script reads: ${NAME:-default} and ${NAME+set}."""
    with open(script, encoding="utf-8") as f:
        return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?::-|\+set)", f.read()))


ALL_SETTINGS = set().union(*(settings_read_by(s) for s in (CREATE, PRETRAIN, MULTINODE)))


def run(script, *args, env=None, timeout=300, **kwargs):
    """Runs a script with a clean environment plus `env`; returns the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if k not in ALL_SETTINGS}
    full_env["PYTHON"] = sys.executable
    full_env.update(env or {})
    return subprocess.run(
        [script, *map(str, args)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def assert_refused(script, cases, out):
    """Each (env, args, message) case exits 2 naming `message`, and `out` stays absent."""
    for env, args, message in cases:
        result = run(script, *args, env=env)
        assert result.returncode == 2, (message, result.stderr)
        assert message in result.stderr, (message, result.stderr)
        assert not out.exists()


def tiny_bert_config(path, max_position_embeddings=512, vocab_size=None):
    path.write_text(
        json.dumps(
            {
                "vocab_size": vocab_size or len(VOCAB),
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 37,
                "hidden_act": "gelu",
                "hidden_dropout_prob": 0.1,
                "attention_probs_dropout_prob": 0.1,
                "max_position_embeddings": max_position_embeddings,
                "type_vocab_size": 2,
                "initializer_range": 0.02,
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A made-up vocabulary, a corpus of 5 files (one in a subdirectory, plus a hidden
    file to be skipped), held-out eval text, a tiny BERT config, and the data of both
    phases made by create_data.sh."""
    root = tmp_path_factory.mktemp("scripts")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    rng = random.Random(0)

    def documents(n):
        docs = []
        for _ in range(n):
            k, sentences = rng.randrange(len(WORDS)), []
            for _ in range(rng.randint(3, 8)):  # documents walk through the words in order
                length = rng.randint(4, 10)
                sentences.append(" ".join(WORDS[(k + j) % len(WORDS)] for j in range(length)))
                k += length
            docs.append("\n".join(sentences))
        return "\n\n".join(docs) + "\n"

    corpus = root / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for i, n in enumerate((14, 10, 8, 6)):
        (corpus / f"part-{i}.txt").write_text(documents(n))
    (corpus / "sub" / "more.txt").write_text(documents(4))
    (corpus / ".hidden.txt").write_text("\x00 not text\n")
    (root / "eval.txt").write_text(documents(3))
    config = tiny_bert_config(root / "bert_config.json")
    data = root / "data"
    env = {
        "VOCAB_FILE": root / "vocab.txt",
        "EVAL_INPUT": root / "eval.txt",
        "NUM_SHARDS": "4",
        "DUPE_FACTOR": "2",
    }
    result = run(CREATE, corpus, data, env=env)
    assert result.returncode == 0, result.stderr
    return {"root": root, "corpus": corpus, "data": data, "config": config, "env": env}


# ----------------------------------------------------------------------------------------
# --help and the input checks


@pytest.mark.parametrize("script", [CREATE, PRETRAIN, MULTINODE])
def test_help_documents_every_setting(script):
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: scripts/" + os.path.basename(script))
    names = settings_read_by(script)
    assert names, script
    undocumented = sorted(n for n in names if not re.search(rf"\b{n}\b", result.stdout))
    assert not undocumented, f"{script} --help does not mention {undocumented}"
    bad = run(script, "--bogus")
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_create_data_makes_both_phases_with_metadata(workspace):
    data = workspace["data"]
    for phase, (seq, pred) in ((1, (128, 20)), (2, (512, 80))):
        shards = sorted(p.name for p in (data / f"phase{phase}").glob("train-*.tfrecord"))
        assert shards == [f"train-{i:05d}-of-00004.tfrecord" for i in range(4)]
        metas = [
            json.loads((data / f"phase{phase}" / f"{s}.json").read_text())
            for s in [*shards, "eval.tfrecord"]
        ]
        assert {(m["max_seq_length"], m["max_predictions_per_seq"]) for m in metas} == {(seq, pred)}
        assert all(m["num_instances"] > 0 for m in metas)
        # Every non-hidden input file went into exactly one group, each group its own seed.
        inputs = [f for m in metas[:-1] for f in m["input_files"]]
        assert sorted(set(inputs)) == sorted(
            str(p) for p in workspace["corpus"].rglob("*.txt") if not p.name.startswith(".")
        )
        assert metas[-1]["input_files"] == [str(workspace["root"] / "eval.txt")]
        seeds = {m["random_seed"] for m in metas}
        assert len(seeds) == 5  # 4 groups (NUM_GROUPS = min(5 files, 4 shards)) + eval
    assert (data / "create_data.log").stat().st_size > 0


def test_create_data_resumes_and_refuses_other_settings(workspace):
    data, corpus, env = workspace["data"], workspace["corpus"], workspace["env"]
    shard = data / "phase2" / "train-00002-of-00004.tfrecord"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data.rglob("*.tfrecord*")}

    again = run(CREATE, corpus, data, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("complete, skipped") == 10  # 2 phases x (4 groups + eval)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before

    # A shard lost (or a run killed before its commit): only its group runs again, and
    # makes the same bytes.
    shard.unlink()
    resumed = run(CREATE, corpus, data, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("complete, skipped") == 9
    assert shard.read_bytes() == before[shard][1]
    unchanged = [p for p in before if p not in (shard, data / "phase2" / f"{shard.name}.json")]
    assert all(p.stat().st_mtime_ns == before[p][0] for p in unchanged)

    other = run(CREATE, corpus, data, env={**env, "DUPE_FACTOR": "3"})
    assert other.returncode == 2
    assert "--dupe_factor=2 then, --dupe_factor=3 now" in other.stderr
    assert "use another OUTPUT_DIR" in other.stderr
    assert shard.read_bytes() == before[shard][1]


def test_create_data_checks_inputs_before_starting(workspace, tmp_path):
    corpus, env = workspace["corpus"], workspace["env"]
    out = tmp_path / "out"
    cases = [
        ({}, [corpus, out], "set VOCAB_FILE"),
        (env, [tmp_path / "missing", out], f"INPUT {tmp_path / 'missing'}: no such file"),
        (env, [str(corpus / "*.nothing"), out], "no file matches it as a glob"),
        ({**env, "VOCAB_FILE": tmp_path / "no-vocab.txt"}, [corpus, out], "no-vocab.txt: no such"),
        ({**env, "NUM_GROUPS": "9"}, [corpus, out], "there are 5 non-empty input files"),
        ({**env, "EVAL_INPUT": corpus / "part-1.txt"}, [corpus, out], "shares files with INPUT"),
        ({**env, "PHASE2_MAX_PREDICTIONS": "600"}, [corpus, out], "must be below PHASE2_SEQ"),
        ({**env, "PHASES": "3"}, [corpus, out], "expected phases 1 and/or 2"),
        (env, [corpus], "expected INPUT... OUTPUT_DIR"),
    ]
    assert_refused(CREATE, cases, out)


def test_create_data_dry_run_deals_files_by_size(workspace, tmp_path):
    result = run(
        CREATE, "--dry_run", workspace["corpus"], tmp_path / "out",
        env={**workspace["env"], "NUM_GROUPS": "2", "NUM_SHARDS": "5", "PHASES": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    groups = re.findall(r"--input_file=(.*)", result.stdout)
    outputs = re.findall(r"--output_file=(.*)", result.stdout)
    # Largest file first, into the group with the fewest bytes so far (ties: the first).
    files = sorted(
        (p for p in workspace["corpus"].rglob("*.txt") if not p.name.startswith(".")),
        key=lambda p: (-p.stat().st_size, str(p)),
    )
    expected, totals = [[], []], [0, 0]
    for path in files:
        g = totals.index(min(totals))
        expected[g].append(str(path))
        totals[g] += path.stat().st_size
    assert [g.split(",") for g in groups[:2]] == [sorted(g) for g in expected]
    assert len(expected[0]) != len(expected[1])  # a split by count would differ
    assert outputs[:2] == [
        "train-00000-of-00005.tfrecord,train-00001-of-00005.tfrecord",
        "train-00002-of-00005.tfrecord,train-00003-of-00005.tfrecord,train-00004-of-00005.tfrecord",
    ]
    assert not (tmp_path / "out").exists()


def dry_run_commands(stdout: str) -> dict[int, dict[str, str]]:
    """{phase: {flag: value}} from the command lines pretrain.sh --dry_run prints."""
    commands = {}
    for phase, line in re.findall(r"^phase (\d) \[\w+\]: (.*)$", stdout, re.M):
        flags = {}
        for word in shlex.split(line)[2:]:
            name, _, value = word[2:].partition("=")
            flags[name] = value
        commands[int(phase)] = flags
    return commands


@pytest.mark.parametrize(
    "recipe, gpus, expected",
    [
        # BERT paper: 256 sequences per step, 90% of 1M steps at 128 then 10% at 512.
        ("bert-paper", 1, [
            {"batch_size": "64", "gradient_accumulation_steps": "4", "num_train_steps": "900000",
             "num_warmup_steps": "10000", "learning_rate": "1e-4", "optimizer": "adamw",
             "poly_power": "1"},
            {"batch_size": "16", "gradient_accumulation_steps": "16", "num_train_steps": "100000",
             "num_warmup_steps": "1000", "learning_rate": "1e-5"},
        ]),
        # NVIDIA's LAMB: 65,536 then 32,768 sequences per step (64 x 8 x 128, 16 x 8 x 256).
        ("nvidia-lamb", 8, [
            {"batch_size": "64", "gradient_accumulation_steps": "128", "num_train_steps": "7038",
             "num_warmup_steps": "2000", "learning_rate": "6e-3", "optimizer": "lamb",
             "poly_power": "0.5"},
            {"batch_size": "16", "gradient_accumulation_steps": "256", "num_train_steps": "1563",
             "num_warmup_steps": "200", "learning_rate": "4e-3"},
        ]),
    ],
)  # fmt: skip
def test_pretrain_recipes_keep_published_batches(workspace, tmp_path, recipe, gpus, expected):
    out = tmp_path / "out"
    result = run(
        PRETRAIN, "--dry_run", workspace["config"], workspace["data"], out,
        env={"RECIPE": recipe, "NUM_GPUS": str(gpus)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    commands = dry_run_commands(result.stdout)
    for phase in (1, 2):
        assert expected[phase - 1].items() <= commands[phase].items(), commands[phase]
        assert commands[phase]["num_gpus"] == str(gpus)
        assert commands[phase]["output_dir"] == f"{out}/phase{phase}"
        eval_data = workspace["data"] / f"phase{phase}" / "eval.tfrecord"
        assert commands[phase]["eval_input_file"] == str(eval_data)
    assert commands[2]["init_checkpoint"] == f"{out}/phase1"
    assert not out.exists()


def test_pretrain_passes_xla_only_when_asked(workspace, tmp_path):
    # Not set (auto): no flag, so the trainer picks for the hardware and a resumed run
    # keeps its mode; 1 and 0 force it.
    for xla, flag in ((None, None), ("1", "xla"), ("0", "noxla")):
        env = {} if xla is None else {"XLA": xla}
        result = run(
            PRETRAIN, "--dry_run", workspace["config"], workspace["data"], tmp_path / "out",
            env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        for flags in dry_run_commands(result.stdout).values():
            assert {"xla", "noxla"} & flags.keys() == ({flag} if flag else set()), flags


def test_pretrain_checks_inputs_before_starting(workspace, tmp_path):
    config, data = workspace["config"], workspace["data"]
    out = tmp_path / "out"
    short = tiny_bert_config(tmp_path / "short.json", max_position_embeddings=128)
    small_vocab = tiny_bert_config(tmp_path / "small_vocab.json", vocab_size=30)
    cpu = {"NUM_GPUS": "0", "CPU_REPLICAS": "2"}
    cases = [
        ({}, [short, data, out], "512 tokens, more than max_position_embeddings=128"),
        ({}, [small_vocab, data, out], "more than vocab_size=30"),
        ({}, [tmp_path / "none.json", data, out], "none.json: no such readable file"),
        ({}, [config, tmp_path / "nodata", out], "make it with scripts/create_data.sh"),
        ({"PHASE2_DATA": f"{data}/phase9/*.tfrecord"}, [config, data, out], "matches no file"),
        ({**cpu, "PHASE1_GLOBAL_BATCH": "7"}, [config, data, out], "not a multiple of the 2"),
        ({"NUM_GPUS": "3"}, [config, data, out], "PHASE1_GLOBAL_BATCH=256 is not a multiple"),
        ({"RECIPE": "adam"}, [config, data, out], "expected bert-paper or nvidia-lamb"),
        ({"TOTAL_STEPS": "1000", "PHASE2_WARMUP": "500"}, [config, data, out], "never reach"),
        ({"PHASE1_LR": "fast"}, [config, data, out], "PHASE1_LR=fast: expected a number"),
        ({"XLA": "yes"}, [config, data, out], "XLA=yes: expected 0, 1 or auto"),
        ({"TF_CONFIG": "{oops"}, [config, data, out], "TF_CONFIG is not a valid cluster"),
        ({}, [config, data], "expected BERT_CONFIG DATA_DIR OUTPUT_DIR"),
    ]
    assert_refused(PRETRAIN, cases, out)


# ----------------------------------------------------------------------------------------
# The real thing, on a tiny BERT


def test_pretrain_two_phases_then_eval_on_cpu(workspace, tmp_path):
    out = tmp_path / "out"
    env = {
        "NUM_GPUS": "0", "CPU_REPLICAS": "2", "XLA": "0",
        "TOTAL_STEPS": "10", "PHASE1_GLOBAL_BATCH": "8", "PHASE2_GLOBAL_BATCH": "8",
        "LOG_EVERY": "3", "MAX_EVAL_STEPS": "1",
    }  # fmt: skip
    result = run(PRETRAIN, workspace["config"], workspace["data"], out, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "phase1" / "model.ckpt-9.index").exists()
    assert (out / "phase2" / "model.ckpt-1.index").exists()
    for phase, step in ((1, 9), (2, 1)):
        results = (out / f"phase{phase}" / "eval_results.txt").read_text()
        assert f"global_step = {step}\n" in results
        assert "masked_lm_accuracy = " in results
    log = (out / "pretrain.log").read_text()
    commands = [line for line in log.splitlines() if "run_pretraining_gpu.py" in line]
    assert len(commands) == 2
    assert "--num_train_steps=9 " in commands[0] and "--max_seq_length" not in commands[0]
    assert f"--init_checkpoint={out}/phase1" in commands[1]
    assert "sequences of 512 with 80 predictions" in log  # phase 2 ran on phase-2 data

    # Run again: both phases are finished, nothing is trained or evaluated again.
    started = time.monotonic()
    again = run(PRETRAIN, workspace["config"], workspace["data"], out, env=env)
    assert again.returncode == 0, again.stderr
    assert "phase 1: finished (model.ckpt-9), skipped" in again.stderr
    assert "phase 2: finished (model.ckpt-1), skipped" in again.stderr
    assert time.monotonic() - started < 20
    log = (out / "pretrain.log").read_text()
    assert len([line for line in log.splitlines() if "run_pretraining_gpu.py" in line]) == 2


# ----------------------------------------------------------------------------------------
# Resuming and stopping, with a fake trainer

FAKE_TRAINER = """#!{python}
# Stands in for `python run_pretraining_gpu.py ...`; any other use runs the real Python.
import json, os, signal, sys, time

args = sys.argv[1:]
if not (args and args[0].endswith("run_pretraining_gpu.py")):
    os.execv({python!r}, [{python!r}, *args])
fake = os.environ["FAKE_DIR"]
hang = os.environ.get("FAKE_MODE") == "hang"
received = []
if hang:  # like the trainer: its own handlers, whatever the parent left ignored
    def handle(signum, frame):
        received.append(signal.Signals(signum).name)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
flags = dict(a[2:].split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)
with open(os.path.join(fake, "calls.jsonl"), "a") as f:
    record = dict(flags=flags, tf_config=os.environ.get("TF_CONFIG"), pid=os.getpid(),
                  sid=os.getsid(0), gpus=os.environ.get("CUDA_VISIBLE_DEVICES"))
    f.write(json.dumps(record) + "\\n")
if hang:
    deadline = time.time() + 60
    while not received and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # a second signal, if any, arrives now
    with open(os.path.join(fake, "signals.log"), "a") as f:
        f.write(" ".join(received) + "\\n")
    sys.exit(128 + getattr(signal, received[0]) if received else 1)
steps, out = flags["num_train_steps"], flags["output_dir"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "checkpoint"), "w") as f:
    f.write(f'model_checkpoint_path: "model.ckpt-{{steps}}"\\n')
with open(os.path.join(out, "eval_results.txt"), "w") as f:
    f.write(f"global_step = {{steps}}\\nloss = 1.0\\n")
print("fake trainer: trained and evaluated", flush=True)
"""


@pytest.fixture
def fake_trainer(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    python = fake / "python"
    python.write_text(FAKE_TRAINER.format(python=sys.executable))
    python.chmod(0o755)

    def calls():
        path = fake / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def signals():
        return (fake / "signals.log").read_text().splitlines()

    env = {"PYTHON": str(python), "FAKE_DIR": str(fake), "NUM_GPUS": "2"}
    return {"env": env, "calls": calls, "signals": signals}


def start(script, *args, env):
    full_env = {k: v for k, v in os.environ.items() if k not in ALL_SETTINGS}
    full_env.update(env)
    return subprocess.Popen(
        [script, *map(str, args)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


def wait_for_call(fake_trainer, count, process):
    deadline = time.monotonic() + 60
    while len(fake_trainer["calls"]()) < count:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(
    "stop, status",
    [
        # Ctrl-C at a terminal: SIGINT to the whole foreground process group.
        (lambda p: os.killpg(p.pid, signal.SIGINT), 130),
        # A scheduler or `kill`: SIGTERM to the script alone.
        (lambda p: os.kill(p.pid, signal.SIGTERM), 143),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_pretrain_stops_cleanly_and_resumes(workspace, tmp_path, fake_trainer, stop, status):
    out = tmp_path / "out"
    args = (workspace["config"], workspace["data"], out)
    process = start(PRETRAIN, *args, env={**fake_trainer["env"], "FAKE_MODE": "hang"})
    wait_for_call(fake_trainer, 1, process)
    second = run(PRETRAIN, *args, env=fake_trainer["env"])
    assert second.returncode == 2 and "another pretrain.sh is already running" in second.stderr
    stop(process)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == status, output
    assert "run the same command again to resume" in output
    (call,) = fake_trainer["calls"]()
    # The trainer got exactly one SIGTERM (a second signal means "stop at once, no
    # checkpoint"), never the terminal's SIGINT, and is gone; phase 2 never started.
    assert fake_trainer["signals"]() == ["SIGTERM"]
    assert call["sid"] != process.pid
    with pytest.raises(ProcessLookupError):
        os.kill(call["pid"], 0)

    # The same command again: phase 1 runs again (the trainer resumes it), then phase 2.
    resumed = run(PRETRAIN, *args, env=fake_trainer["env"])
    assert resumed.returncode == 0, resumed.stderr
    calls = fake_trainer["calls"]()[1:]
    assert [c["flags"]["output_dir"] for c in calls] == [f"{out}/phase1", f"{out}/phase2"]
    assert calls[1]["flags"]["init_checkpoint"] == f"{out}/phase1"
    assert calls[0]["flags"] == call["flags"]

    # Phase 2 trained but not evaluated (stopped in its eval): only phase 2 runs again.
    (out / "phase2" / "eval_results.txt").unlink()
    again = run(PRETRAIN, *args, env=fake_trainer["env"])
    assert again.returncode == 0, again.stderr
    assert "phase 1: finished" in again.stderr
    assert [c["flags"]["output_dir"] for c in fake_trainer["calls"]()[3:]] == [f"{out}/phase2"]

    # Another recipe into the same directory is refused, naming what changed.
    other = run(PRETRAIN, *args, env={**fake_trainer["env"], "PHASE2_LR": "2e-5"})
    assert other.returncode == 2
    assert "PHASE2_LR: 1e-5 then, 2e-5 now" in other.stderr
    assert len(fake_trainer["calls"]()) == 4
    # XLA is not part of the recipe (the trainer keeps a resumed phase's mode), nor is the
    # XLA line of a settings file written before it left the recipe.
    with open(out / "pretrain_settings.txt", "a") as f:
        f.write("XLA=1\n")
    for xla in ("0", "1", "auto"):
        finished = run(PRETRAIN, *args, env={**fake_trainer["env"], "XLA": xla})
        assert finished.returncode == 0 and "phase 2: finished" in finished.stderr, xla
    assert len(fake_trainer["calls"]()) == 4


# ----------------------------------------------------------------------------------------
# Several machines


def test_multinode_writes_tf_config(workspace, tmp_path, fake_trainer):
    args = (workspace["config"], workspace["data"], tmp_path / "out")
    env = {"RECIPE": "nvidia-lamb", "NUM_GPUS": "8"}
    result = run(MULTINODE, "--dry_run", "gpu1,gpu2:2222", 1, *args, env=env)
    assert result.returncode == 0, result.stderr
    (tf_config,) = re.findall(r"^TF_CONFIG=(.*)$", result.stdout, re.M)
    assert json.loads(tf_config) == {
        "cluster": {"worker": ["gpu1:12345", "gpu2:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    # 2 machines x 8 GPUs: 65,536 = 64 per replica x 16 replicas x 64 micro-batches.
    commands = dry_run_commands(result.stdout)
    assert commands[1]["batch_size"] == "64"
    assert commands[1]["gradient_accumulation_steps"] == "64"
    assert commands[2]["gradient_accumulation_steps"] == "128"
    assert "num_gpus" not in commands[1]  # a worker uses the GPUs it sees
    assert "8 GPU(s) (CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7) per machine x 2" in result.stdout
    assert "16 replica(s); this is worker 1" in result.stdout
    assert not (tmp_path / "out").exists()

    # For real (with the fake trainer): the trainer sees TF_CONFIG, the log is the worker's.
    env = {**fake_trainer["env"], "PORT": "23456"}
    result = run(MULTINODE, "127.0.0.1,localhost", 0, *args, env=env)
    assert result.returncode == 0, result.stderr
    calls = fake_trainer["calls"]()
    assert len(calls) == 2
    assert json.loads(calls[0]["tf_config"]) == {
        "cluster": {"worker": ["127.0.0.1:23456", "localhost:23456"]},
        "task": {"type": "worker", "index": 0},
    }
    assert calls[0]["gpus"] == "0,1"  # NUM_GPUS=2
    assert (tmp_path / "out" / "pretrain.worker-0.log").exists()


def test_multinode_checks_its_arguments(workspace, tmp_path):
    args = (workspace["config"], workspace["data"], tmp_path / "out")
    cases = [
        (("gpu1,gpu1:12345", 0, *args), "names gpu1:12345 twice"),
        (("gpu1,gpu2", 2, *args), "INDEX=2: expected this machine's position in HOSTS, 0 to 1"),
        (("gpu1,gpu2", "first", *args), "INDEX=first"),
        (("gpu 1", 0, *args), "HOSTS entry 'gpu 1': expected host or host:port"),
        (("gpu1:99999", 0, *args), "port 99999 is not between 1 and 65535"),
        (("gpu1,,gpu2", 0, *args), "HOSTS entry '': expected host or host:port"),
        (("gpu1,gpu2", 0, *args[:2]), "expected HOSTS INDEX BERT_CONFIG DATA_DIR OUTPUT_DIR"),
        # Every worker reads its own training files: 4 shards cannot feed 8 workers.
        (("a,b,c,d,e,f,g,h", 0, *args), "PHASE1_DATA: 4 file(s) for 8 workers"),
    ]
    for case_args, message in cases:
        result = run(MULTINODE, *case_args)
        assert result.returncode == 2, (message, result.stderr)
        assert message in result.stderr, (message, result.stderr)
    assert not (tmp_path / "out").exists()
