"""The default training recipe (FP32 phase, then a QAT phase distilled from it) and the quantization target CPU:
the distillation loss and its wiring into the Trainer, the phases a run trains and records, the QAT phase keeping its
start when training does not beat it, and INT8 models refused on CPUs whose kernels compute them otherwise."""

import argparse
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_step, run_steps, tiny_workspace, train_tiny

import common
from common import PipelineError, has_vnni, int8_cpu_mismatch
from train_eager_qat import (Phase, check_budget, distillation_loss, distillation_trainer, parse_args, phases_of,
                             reduce_range_for, weighted_cross_entropy)

AVX2 = {"model": "fake AVX2 CPU", "machine": "x86_64", "flags": {"avx2": True}}
AVX512 = {"model": "fake AVX-512 CPU without VNNI", "machine": "x86_64", "flags": {"avx2": True, "avx512f": True}}
VNNI = {"model": "fake VNNI CPU", "machine": "x86_64", "flags": {"avx2": True, "avx512_vnni": True}}
AVX_VNNI = {"model": "fake AVX-VNNI CPU", "machine": "x86_64", "flags": {"avx2": True, "avx_vnni": True}}
AMX = {"model": "fake AMX CPU", "machine": "x86_64", "flags": {"amx_int8": True}}
ARM = {"model": "fake ARM CPU", "machine": "aarch64", "flags": {}}
EIGHT_BIT = {"weight_type": "int8", "reduce_range": False, "target_cpu": "vnni"}
SEVEN_BIT = {"weight_type": "int8", "reduce_range": True, "target_cpu": "portable"}


# ---------------------------------------------------------------- distillation


def test_distillation_loss_is_scaled_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    t = 2.0
    manual = sum(float((F.softmax(teacher[i] / t, -1) * (F.log_softmax(teacher[i] / t, -1)
                                                         - F.log_softmax(student[i] / t, -1))).sum()) for i in range(5))
    assert float(distillation_loss(student, teacher, t, 5)) == pytest.approx(manual * t * t / 5, rel=1e-5)
    assert float(distillation_loss(teacher, teacher, t, 5)) == pytest.approx(0.0, abs=1e-6)


def tiny_classifier():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_trainer_loss_mixes_cross_entropy_and_distillation(tmp_path, weight):
    from transformers import TrainingArguments

    model = tiny_classifier()
    class_w = np.array([1.0, 2.0, 0.5])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = distillation_trainer(weight, 3.0)(model=model, args=args,
                                                compute_loss_func=weighted_cross_entropy(class_w))
    ids = torch.randint(5, 50, (4, 7))
    labels = torch.tensor([0, 2, 1, 1])
    teacher = torch.randn(4, 3)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "teacher_logits": teacher}
    loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=4)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    ce = F.cross_entropy(logits, labels, weight=torch.tensor(class_w, dtype=torch.float32), reduction="sum") / 4
    kd = distillation_loss(logits, teacher, 3.0, 4)
    assert float(loss) == pytest.approx(float((1 - weight) * ce + weight * kd), rel=1e-5)
    # evaluation batches carry no teacher logits: the loss is the cross-entropy alone
    no_teacher = {k: v for k, v in inputs.items() if k != "teacher_logits"}
    assert float(trainer.compute_loss(model, no_teacher, num_items_in_batch=4)) == pytest.approx(float(ce), rel=1e-5)


def test_teacher_logits_reach_the_loss_in_training(tmp_path, monkeypatch):
    """The Trainer as the QAT phase builds it: its training batches carry the rows' teacher logits (the Trainer drops
    columns the model's forward does not take unless told not to) and each training step adds the distillation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    import train_eager_qat as t
    from common import Split
    from tiny_model import make_tiny_bert

    texts = ["makanan enak sekali", "pelayanan buruk", "biasa saja", "tempatnya bersih", "mahal dan lambat"] * 2
    folder = make_tiny_bert(tmp_path / "bert", texts, vocab_size=60)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    data = t.EncodedDataset(Split(texts, ["a", "b"] * 5), tokenizer, ["input_ids", "attention_mask"],
                            {"a": 0, "b": 1}, 16)
    teacher = np.random.default_rng(0).normal(size=(len(texts), 2)).astype(np.float32)
    args = t.parse_args(["--model", str(folder), "--batch-size", "4"])
    phase = t.phases_of(args, len(texts))[1]
    trainer = t.distillation_trainer(phase.distill_weight, phase.distill_temperature)(
        model=model, args=t.training_arguments(args, phase, tmp_path / "ckpt"), train_dataset=t.WithTeacher(data, teacher),
        eval_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer), compute_loss_func=t.weighted_cross_entropy(np.ones(2)))
    batch = next(iter(trainer.get_train_dataloader()))
    assert tuple(batch["teacher_logits"].shape) == (4, 2)
    calls = []
    real = t.distillation_loss
    monkeypatch.setattr(t, "distillation_loss", lambda *a: calls.append(a[1]) or real(*a))
    trainer.training_step(trainer.model, dict(batch))
    assert len(calls) == 1 and torch.equal(calls[0], batch["teacher_logits"])


def test_teacher_logits_come_back_in_dataset_order(tmp_path):
    """The teacher pass batches rows by length (less padding); each row's logits are still its own, as one row at a
    time in the dataset's order gives them."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    import train_eager_qat as t
    from common import Split
    from tiny_model import make_tiny_bert

    texts = ["enak", "pelayanan buruk sekali dan lambat", "biasa", "tempatnya bersih nyaman dan murah sekali",
             "mahal", "makanan enak", "buruk dan mahal", "ok"]
    folder = make_tiny_bert(tmp_path / "bert", texts, vocab_size=60)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = tiny_classifier_from(folder)
    data = t.EncodedDataset(Split(texts, ["a", "b"] * 4), tokenizer, ["input_ids", "attention_mask"], {"a": 0, "b": 1}, 16)
    collator = DataCollatorWithPadding(tokenizer)
    batched = t.teacher_logits(model, data, collator, batch_size=3)
    with torch.inference_mode():
        one_by_one = np.concatenate([model(**tokenizer([text], return_tensors="pt")).logits.numpy() for text in texts])
    assert batched.shape == (len(texts), 2)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert len({tuple(np.round(r, 4)) for r in batched}) > 1  # the rows differ, so a shuffled order would show


def tiny_classifier_from(folder):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)


def test_evaluation_split_is_batched_by_length(tmp_path):
    from transformers import AutoTokenizer

    import train_eager_qat as t
    from common import Split
    from tiny_model import make_tiny_bert

    texts = ["pelayanan buruk sekali dan lambat", "enak", "tempatnya bersih", "ok"]
    tokenizer = AutoTokenizer.from_pretrained(make_tiny_bert(tmp_path / "bert", texts, vocab_size=60))
    split = Split(texts, ["a", "b", "a", "b"])
    names = ["input_ids", "attention_mask"]
    plain = t.EncodedDataset(split, tokenizer, names, {"a": 0, "b": 1}, 16)
    by_len = t.EncodedDataset(split, tokenizer, names, {"a": 0, "b": 1}, 16, by_length=True)
    lengths = [len(r["input_ids"]) for r in by_len.rows]
    assert lengths == sorted(lengths) and [len(r["input_ids"]) for r in plain.rows] != lengths
    # the same rows, labels with their texts
    assert sorted(map(str, plain.rows)) == sorted(map(str, by_len.rows))


def test_phase_scores_are_the_restored_epochs():
    """load_best_model_at_end restores the first epoch with the best validation macro-F1: its logged scores are the
    phase's, without evaluating it again."""
    import types

    import train_eager_qat as t

    log = [{"loss": 1.0, "epoch": 0.5}, {"eval_f1_macro": 0.7, "eval_accuracy": 0.8, "epoch": 1.0},
           {"eval_f1_macro": 0.9, "eval_accuracy": 0.85, "epoch": 2.0}, {"eval_f1_macro": 0.9, "eval_accuracy": 0.9,
                                                                         "epoch": 3.0}]
    trainer = types.SimpleNamespace(state=types.SimpleNamespace(log_history=log), evaluate=lambda: pytest.fail("re-ran"))
    assert t.best_epoch_eval(trainer) == log[2]


# ---------------------------------------------------------------- phases and budgets


def args_of(*argv):
    return parse_args(["--model", "minilm", *argv])


def test_phases_of_each_recipe():
    assert [p.name for p in phases_of(args_of(), 2000)] == ["fp32", "qat"]
    fp32, qat = phases_of(args_of("--epochs", "2", "--lr", "1e-4", "--qat-epochs", "0.5", "--qat-lr", "1e-5",
                                  "--distill-weight", "0.3", "--distill-temperature", "4"), 2000)
    assert fp32 == Phase("fp32", 2.0, 1e-4, qat=False)
    assert qat == Phase("qat", 0.5, 1e-5, qat=True, distill_weight=0.3, distill_temperature=4.0)
    assert phases_of(args_of("--init-from", "other"), 2000) == [
        Phase("qat", 1.0, 3e-5, qat=True, distill_weight=0.5, distill_temperature=2.0)]
    assert phases_of(args_of("--no-qat"), 2000) == [Phase("fp32", 3.0, 5e-5, qat=False)]
    assert phases_of(args_of("--recipe", "qat-from-pretrained"), 2000) == [Phase("qat", 3.0, 5e-5, qat=True)]


@pytest.mark.parametrize("n_train, fp32_epochs, qat_epochs, generic_epochs", [
    (11000, 2, 1, 3), (2000, 2, 1, 3), (1999, 3, 2, 4), (1033, 4, 2, 6), (1000, 4, 2, 6), (500, 8, 4, 12),
    (300, 14, 7, 20)])
def test_default_epochs_take_the_steps_of_the_measured_budget(n_train, fp32_epochs, qat_epochs, generic_epochs):
    """Below 2,000 rows each default phase gets the fewest whole epochs that take at least the steps 2,000 rows take;
    epochs given on the command line are trained as given."""
    fp32, qat = phases_of(parse_args([]), n_train)
    assert (fp32.epochs, qat.epochs) == (fp32_epochs, qat_epochs)
    assert phases_of(args_of("--no-qat"), n_train)[0].epochs == generic_epochs  # another model's default: 3 epochs
    given = phases_of(parse_args(["--epochs", "1.5", "--qat-epochs", "0.5"]), n_train)
    assert [p.epochs for p in given] == [1.5, 0.5]


def test_defaults_fill_a_new_namespace():
    args = args_of()
    assert args.lr == 5e-5 and args.epochs is None and args.recipe == "fp32-then-qat" and args.target_cpu == "portable"
    assert parse_args([]).lr == 1e-4  # the default model's recipe


@pytest.mark.parametrize("change, fragment", [({"epochs": 0}, "--epochs 0"), ({"qat_epochs": -1}, "--qat-epochs -1"),
                                              ({"max_train_samples": 0}, "--max-train-samples 0"),
                                              ({"distill_weight": 1.5}, "--distill-weight"),
                                              ({"no_qat": True, "weight_clip": "mse"}, "--weight-clip")])
def test_budgets_that_train_nothing_are_refused(change, fragment):
    args = argparse.Namespace(**{**vars(args_of()), **change})
    with pytest.raises(PipelineError, match=fragment):
        check_budget(args)


# ---------------------------------------------------------------- target CPU


@pytest.mark.parametrize("target, cpu, reduce_range, resolved", [
    ("portable", VNNI, True, "portable"), ("portable", AVX2, True, "portable"), ("vnni", AVX2, False, "vnni"),
    ("native", VNNI, False, "vnni"), ("native", AMX, False, "vnni"), ("native", AVX2, True, "portable"),
    ("native", AVX512, True, "portable")])
def test_target_cpu_decides_the_weight_range(target, cpu, reduce_range, resolved):
    rr, got, why = reduce_range_for(target, cpu)
    assert (rr, got) == (reduce_range, resolved) and why


@pytest.mark.parametrize("cpu", [AVX2, AVX512])
def test_eight_bit_weights_need_vnni(cpu):
    why = int8_cpu_mismatch(EIGHT_BIT, cpu)
    assert "no VNNI" in why and "--target-cpu portable" in why
    assert int8_cpu_mismatch(SEVEN_BIT, cpu) is None
    assert int8_cpu_mismatch({"weight_type": "uint8", "reduce_range": False}, cpu) is None


@pytest.mark.parametrize("cpu", [VNNI, AVX_VNNI, AMX])
def test_vnni_cpus_run_every_setting(cpu):
    assert int8_cpu_mismatch(EIGHT_BIT, cpu) is None and int8_cpu_mismatch(SEVEN_BIT, cpu) is None


def test_unverified_architectures_are_refused():
    assert "x86" in int8_cpu_mismatch(SEVEN_BIT, ARM) and "x86" in int8_cpu_mismatch(EIGHT_BIT, ARM)


# ---------------------------------------------------------------- end to end on a tiny BERT


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An FP32 run quantized with 8-bit weights (gate skipped, so it is made on any CPU) and one with 7-bit weights,
    then the default recipe's QAT phase started from the FP32 run."""
    w = tiny_workspace(tmp_path_factory.mktemp("recipe"))
    train_tiny(w, "fp32-vnni", "--no-qat", "--target-cpu", "vnni", "--epochs", 2)
    run_step("export_to_onnx.py", "--run-name", "fp32-vnni", env=w["env"])
    run_step("quantize_onnx_dynamic.py", "--run-name", "fp32-vnni", "--gate-rows", "0", env=w["env"])
    train_tiny(w, "recipe", "--epochs", 1, "--max-train-samples", 1000, qat_epochs=None)  # QAT phase: 2 epochs
    run_steps("recipe", "export_to_onnx.py", "quantize_onnx_dynamic.py", env=w["env"])
    train_tiny(w, "keep-start", "--init-from", "fp32-vnni", "--target-cpu", "vnni", "--qat-lr", "0.5")
    train_tiny(w, "clip", "--init-from", "fp32-vnni", "--weight-clip", "mse")
    run_steps("clip", "export_to_onnx.py", "quantize_onnx_dynamic.py", env=w["env"])  # its gate: INT8 = simulation
    return w


def info(w, run):
    return json.loads((w["tmp"] / "models" / run / "run_info.json").read_text())


def test_default_recipe_records_both_phases(runs):
    i = info(runs, "recipe")
    assert i["recipe"] == "fp32-then-qat" and i["target_cpu"] == "portable" and list(i["phases"]) == ["fp32", "qat"]
    fp32, qat = i["phases"]["fp32"], i["phases"]["qat"]
    assert not fp32["qat"] and qat["qat"] and qat["distill_weight"] == 0.5 and qat["lr"] == 3e-5
    assert fp32["epochs"] == i["epochs"] == 1 and len(fp32["curve"]["val_f1_macro"]) == 1 and fp32["curve"]["loss"]
    # the QAT phase's default budget on 1,000 rows: 2 epochs (the steps 2,000 rows take), each validated
    assert qat["epochs"] == 2 and [e for e, _ in qat["curve"]["val_f1_macro"]] == [0.0, 1.0, 2.0]
    assert qat["curve"]["val_f1_macro"][0] == [0.0, qat["start_val_f1_macro"]]  # the start point at epoch 0
    assert i["val_f1_macro"] == qat["val_f1_macro"] >= qat["start_val_f1_macro"]
    for phase in (fp32, qat):  # where the phase's time went
        assert set(phase["time_s"]) == {"teacher", "start_eval", "train_steps", "epoch_evals"}
        assert all(v >= 0 for v in phase["time_s"].values()) and phase["time_s"]["epoch_evals"] > 0
        assert 0 < sum(phase["time_s"].values()) <= phase["wall_s"]
    assert qat["time_s"]["teacher"] > 0 and qat["time_s"]["start_eval"] > 0 and fp32["time_s"]["start_eval"] < 0.01
    two_epochs = info(runs, "fp32-vnni")["phases"]["fp32"]
    assert two_epochs["val_f1_macro"] == max(f1 for _, f1 in two_epochs["curve"]["val_f1_macro"])
    quant = json.loads((runs["tmp"] / "models" / "recipe" / "quant_config.json").read_text())
    assert quant["reduce_range"] and quant["target_cpu"] == "portable"


def test_qat_phase_keeps_its_start_unless_training_beats_it(runs):
    """A QAT phase at a destructive learning rate: the run records the better of its start and its trained weights
    on validation, and when it keeps the start, its weights are exactly the FP32 run's."""
    qat = info(runs, "keep-start")["phases"]["qat"]
    assert list(info(runs, "keep-start")["phases"]) == ["qat"]  # --init-from: that run is the FP32 phase
    assert qat["val_f1_macro"] == max(qat["start_val_f1_macro"], qat["curve"]["val_f1_macro"][-1][1])
    start = torch.load(runs["tmp"] / "models" / "fp32-vnni" / "model_qat.pth", weights_only=True)
    kept = torch.load(runs["tmp"] / "models" / "keep-start" / "model_qat.pth", weights_only=True)
    same = all(torch.equal(start[k], kept[k]) for k in start)
    assert same == (qat["kept"] == "start")


def test_weight_clip_is_chosen_on_the_start_and_baked_into_the_saved_weights(runs):
    """--weight-clip mse: the clip of each Linear is chosen on the weights the QAT phase starts from and recorded; the
    saved weights are clamped to it, so the saved quantization settings carry no clip (quantize_dynamic's min/max of
    the saved weights is the clipped range; that the simulation and ONNX Runtime then agree:
    tests/test_quant_sim.py::test_clipped_weights_baked_match_onnxruntime_int8, and the quantize step's gate)."""
    from common import load_run_model
    from quant_sim import QuantConfig, plan_quantization, plan_weight_clip

    i = info(runs, "clip")
    rdir = runs["tmp"] / "models"
    start = load_run_model(rdir / "fp32-vnni")
    chosen = plan_weight_clip(start, plan_quantization(start, QuantConfig(reduce_range=True))).weight_clip
    assert i["weight_clip"] == "mse" and i["weight_clip_fractions"] == chosen and min(chosen.values()) < 1.0
    assert json.loads((rdir / "clip" / "quant_config.json").read_text())["weight_clip"] == {}
    assert info(runs, "recipe")["weight_clip"] == "none" and info(runs, "recipe")["weight_clip_fractions"] == {}


def fake_cpu(monkeypatch, cpu):
    monkeypatch.setattr(common, "cpu_info", lambda: cpu)


@pytest.mark.parametrize("cpu", [AVX2, AVX512, ARM])
def test_predictor_refuses_an_eight_bit_model_where_it_would_compute_otherwise(runs, monkeypatch, cpu):
    from predictor import Predictor

    fake_cpu(monkeypatch, cpu)
    with pytest.raises(PipelineError, match="cannot run here") as e:
        Predictor(runs["tmp"] / "models" / "fp32-vnni")
    assert "\n" not in str(e.value)
    if cpu["machine"] == "x86_64":  # the portable model runs on every x86 CPU
        assert Predictor(runs["tmp"] / "models" / "recipe", threads=1).predict(["bagus"])


@pytest.mark.parametrize("cpu", [VNNI, AMX])
def test_predictor_runs_an_eight_bit_model_on_vnni(runs, monkeypatch, cpu):
    from predictor import Predictor

    fake_cpu(monkeypatch, cpu)
    assert Predictor(runs["tmp"] / "models" / "fp32-vnni", threads=1).predict(["bagus"])


def test_steps_on_this_cpu_follow_its_vnni(runs):
    """The quantization gate and predict.py on the real CPU: an 8-bit model runs where this CPU has VNNI, and is
    refused with one line where it has not (CI runs on both kinds)."""
    w = runs
    clone = w["tmp"] / "models" / "fp32-vnni-gated"
    shutil.copytree(w["tmp"] / "models" / "fp32-vnni", clone)
    gate = run_step("quantize_onnx_dynamic.py", "--run-name", clone.name, env=w["env"], check=False)
    texts = w["tmp"] / "texts.csv"
    texts.write_text("text\nbagus sekali\n")
    scored = run_step("predict.py", "--run-name", "fp32-vnni", "--input", texts, "--output", w["tmp"] / "out.csv",
                      env=w["env"], check=False)
    for proc in (gate, scored):
        if has_vnni():
            assert proc.returncode == 0, proc.stderr[-2000:]
        else:
            assert proc.returncode == 2 and "no VNNI" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_weight_range_benchmark_on_this_cpu(runs, tmp_path):
    """benchmarks/weight_range.py: 7-bit weights compute exactly what was simulated on every x86 CPU; on a CPU with
    VNNI 8-bit weights do too (with or without the U8U8 session option). Without VNNI it only measures."""
    proc = run_step("benchmarks/weight_range.py", "--run-name", "recipe", "--rows", 40, "--out-dir", tmp_path,
                    env=runs["env"])
    res = json.loads((tmp_path / "weight_range_recipe.json").read_text())
    seven, eight, u8u8 = res["results"]
    assert seven["reduce_range"] and not eight["reduce_range"] and u8u8["session_config"] == {
        "session.x64quantprecision": "U8U8"}
    assert res["rows"] == 40 and seven["agreement"] == 1.0 and seven["max_abs_logit_diff"] < 1e-4
    if has_vnni():
        assert eight["agreement"] == u8u8["agreement"] == 1.0 and max(eight["max_abs_logit_diff"],
                                                                        u8u8["max_abs_logit_diff"]) < 1e-4
    assert res["cpu"]["model"] in (tmp_path / "weight_range_recipe.md").read_text() and "texts/s" in proc.stdout


def test_error_sources_benchmark_all_row_is_the_runs_simulation(runs, tmp_path):
    """benchmarks/quant_error_sources.py takes a run's quantization apart; its "all" row, on the recipe run (7-bit
    weights, what it was trained and quantized with), must be eval_eager_qat.py's simulation: the same logit error
    against the same FP32 logits, in the same batches (8-bit weights would give about a third of it on this run)."""
    import numpy as np

    for mode in ("--fake-quant", "--no-fake-quant"):
        run_step("eval_eager_qat.py", "--run-name", "recipe", mode, "--latency-samples", 0, env=runs["env"])
    metrics = {s: json.loads((runs["tmp"] / "results" / "recipe" / f"metrics_eager_{s}.json").read_text())
               for s in ("qat", "fp32")}
    sim, fp32 = (np.array(metrics[s]["logits"]) for s in ("qat", "fp32"))
    run_step("benchmarks/quant_error_sources.py", "--run-dir", runs["tmp"] / "models" / "recipe", "--settings", "7bit",
             "--batch-size", metrics["qat"]["batch_size"], "--out-dir", tmp_path, "--report-name", "qes",
             env=runs["env"])
    res = json.loads((tmp_path / "qes.json").read_text())
    rows = {r["source"]: r for r in res["results"]}
    assert list(rows) == ["none (FP32)", "embeddings", "weights", "activations", "all", "all, weights clipped"]
    assert rows["all"]["rel_logit_error"] == pytest.approx(np.abs(sim - fp32).mean() / fp32.std(), rel=1e-3)
    assert rows["all"]["macro_f1"] == pytest.approx(metrics["qat"]["f1_macro"] * 100, abs=1e-9)
    assert rows["none (FP32)"]["rel_logit_error"] == 0
    clipped = rows["all, weights clipped"]
    assert 0.3 <= clipped["clip_fraction_min"] <= clipped["clip_fraction_median"] <= 1
    assert res["rows"] == len(sim) and res["cpu"]["model"] in (tmp_path / "qes.md").read_text()
