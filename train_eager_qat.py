"""Step 1: fine-tune a BERT-family classifier with quantization-aware training (QAT).

The fake quantization (quant_sim.py) reproduces what ONNX Runtime's quantize_dynamic will do to the exported
graph, so the weights are trained for the arithmetic they will be deployed with. The default recipe has two phases
in one run: an FP32 fine-tune (--epochs, --lr), then a short QAT fine-tune of that model (--qat-epochs, --qat-lr)
distilled from it (the FP32 model as teacher: --distill-weight, --distill-temperature). The QAT phase keeps its
starting point (the FP32 weights, i.e. post-training quantization) when no QAT epoch beats it on validation, so the
run's INT8 model is never worse than PTQ on the validation split. --recipe qat-from-pretrained trains one QAT phase
from the pretrained model instead. Writes to models/<run>/:
model_qat.pth (plain FP32 state_dict), config.json (id2label/label2id), tokenizer files, quant_config.json,
run_info.json. Uses the Hugging Face Trainer, so `torchrun`/`accelerate launch` spread it over devices.

    python train_eager_qat.py                                   # offline default model and data
    python train_eager_qat.py --model indobenchmark/indobert-base-p1 --data-dir combined
    python train_eager_qat.py --no-qat --run-name minilm-fp32   # plain FP32 fine-tuning (PTQ baseline)
    python train_eager_qat.py --init-from minilm-fp32 --run-name minilm-qat   # QAT phase only, from that run
"""

import argparse
import copy
import json
import math
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common import (QUANT_CONFIG_FILE, TARGET_CPUS, cpu_info, has_vnni, RUN_INFO_FILE, STATE_DICT_FILE, PipelineError, atomic_files, base_parser,
                    check_known_labels, load_split, main_guard, model_input_names,
                    remove_downstream, results_dir, run_dir, sorted_labels)
from prepare_data import ensure_default_data
from prepare_model import resolve_model
from quant_sim import WEIGHT_TYPES, QuantConfig


# Learning rate and epochs of the FP32 phase (or the one phase of qat-from-pretrained) when not given.
# multilingual-e5-small (the default) starts with a random pooler and head and learns slowly at BERT's usual 5e-5;
# 1e-4 x 2 epochs with the class-balanced loss is what benchmarks/reports measure. Other models keep BERT's recipe.
GENERIC_RECIPE = {"lr": 5e-5, "epochs": 3}
RECIPES = {"default": {"lr": 1e-4, "epochs": 2}}
# The QAT phase: a short fine-tune of the converged FP32 model at a small learning rate, distilled from it (as
# OpenVINO NNCF and Intel Neural Compressor start QAT from the fine-tuned checkpoint). benchmarks/ptq_vs_qat.py
# measures it against PTQ of the same FP32 model.
QAT_PHASE = {"qat_epochs": 1.0, "qat_lr": 3e-5, "distill_weight": 0.5, "distill_temperature": 2.0}
# The default epoch counts are for this many training rows (the size benchmarks/reports measured the recipe on); a
# smaller training set gets more epochs, as many optimizer steps (2 epochs of 500 rows are 32 steps: too few).
BUDGET_ROWS = 2000
RECIPE_CHOICES = ("fp32-then-qat", "qat-from-pretrained")


def parse_args(argv=None):
    p = base_parser(__doc__, training=True)
    p.add_argument("--recipe", choices=RECIPE_CHOICES, default="fp32-then-qat",
                   help="fp32-then-qat: FP32 fine-tune, then a QAT fine-tune distilled from it (one run); "
                        "qat-from-pretrained: one QAT phase from the pretrained model, no teacher")
    p.add_argument("--epochs", type=float, default=None,
                   help=f"epochs of the FP32 phase (of the one phase of qat-from-pretrained) (default: "
                        f"{RECIPES['default']['epochs']:g} for --model default, {GENERIC_RECIPE['epochs']:g} for others, "
                        f"on {BUDGET_ROWS:,} training rows or more; fewer rows get more epochs, as many steps)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate of that phase; default: {RECIPES['default']['lr']:g} for --model default, "
                        f"{GENERIC_RECIPE['lr']:g} for others")
    p.add_argument("--qat-epochs", type=float, default=None,
                   help=f"epochs of the QAT phase of fp32-then-qat (default: {QAT_PHASE['qat_epochs']:g} on "
                        f"{BUDGET_ROWS:,} training rows or more; fewer rows get more epochs, as many steps)")
    p.add_argument("--qat-lr", type=float, default=QAT_PHASE["qat_lr"], help="peak learning rate of the QAT phase")
    p.add_argument("--distill-weight", type=float, default=QAT_PHASE["distill_weight"],
                   help="QAT phase loss = (1 - w) x cross-entropy + w x distillation from the FP32 model (0: none)")
    p.add_argument("--distill-temperature", type=float, default=QAT_PHASE["distill_temperature"],
                   help="softmax temperature of the distillation term (its loss is scaled by T^2)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--max-train-samples", type=int, default=None, help="seeded random subset of train.csv")
    p.add_argument("--no-qat", action="store_true",
                   help="plain FP32 fine-tuning only (the FP32 phase; the post-training quantization baseline)")
    p.add_argument("--init-from", default=None,
                   help="start from this run's model_qat.pth instead of the pretrained model: with fp32-then-qat it "
                        "is the FP32 phase (start and teacher of the QAT phase); its labels must match")
    p.add_argument("--weight-type", choices=WEIGHT_TYPES, default="int8", help="quantize_dynamic weight type")
    p.add_argument("--per-channel", action="store_true", help="per-output-channel weight scales")
    p.add_argument("--target-cpu", choices=TARGET_CPUS, default="portable",
                   help="the CPUs the INT8 model must compute exactly on: portable = any x86 CPU (7-bit weights, "
                        "reduce_range); vnni = x86 CPUs with VNNI or AMX only (8-bit weights; other CPUs refuse to "
                        "load it); native = vnni when this CPU has VNNI, else portable")
    p.add_argument("--weight-clip", choices=("none", "mse"), default="none",
                   help="mse: at the start of the QAT phase, clip each Linear's weights to the fraction of their range "
                        "(0.30 to 1.00) that minimizes their quantization error, and train with that clip; the saved "
                        "weights are clamped to it, so the INT8 model computes what was trained")
    p.add_argument("--optimize-graph", action=argparse.BooleanOptionalAction, default=False,
                   help="fuse the ONNX graph (Attention, EmbedLayerNormalization, ...) before quantization; training "
                        "then simulates the fused quantization (one scale for the packed Q/K/V weight)")
    p.add_argument("--freeze-embeddings", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the word embedding table as pretrained (not trained): faster steps and less memory "
                        "for large-vocabulary models")
    p.add_argument("--class-weight", choices=("balanced", "none"), default="balanced",
                   help="weight the loss of each label by n / (labels x its count) (sklearn's 'balanced'), so rare "
                        "labels count as much as common ones, as macro-F1 (the checkpoint metric) counts them")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=False,
                   help="batch texts of similar length together (less padding, faster steps; batches less random)")
    args = p.parse_args(argv)
    if args.lr is None:  # a new namespace: the parsed one is left as parsed
        args = argparse.Namespace(**{**vars(args), "lr": RECIPES.get(args.model, GENERIC_RECIPE)["lr"]})
    check_budget(args)
    return args


def check_budget(args) -> None:
    """Refuse budgets that would write an untrained (or un-fine-tuned) run."""
    for option, epochs in (("--epochs", args.epochs), ("--qat-epochs", args.qat_epochs)):
        if epochs is not None and epochs <= 0:
            raise PipelineError(f"{option} {epochs:g}: train more than 0 epochs (or leave it out for the default)")
    if args.max_train_samples is not None and args.max_train_samples < 2:
        raise PipelineError(f"--max-train-samples {args.max_train_samples}: train on at least 2 rows (or leave it out)")
    if args.weight_clip != "none" and args.no_qat:
        raise PipelineError("--weight-clip clips weights in the QAT phase, which --no-qat skips: leave one of them out")
    if not 0 <= args.distill_weight <= 1 or args.distill_temperature <= 0:
        raise PipelineError("--distill-weight must be within 0..1 and --distill-temperature more than 0")


@dataclass(frozen=True)
class Phase:
    """One training phase: its budget, whether it trains with fake quantization, and its distillation."""

    name: str
    epochs: float
    lr: float
    qat: bool
    distill_weight: float = 0.0
    distill_temperature: float = 1.0


def default_epochs(epochs: float, n_train: int) -> float:
    """A default epoch count for n_train rows: as given from BUDGET_ROWS rows up; below, the epochs that take as many
    optimizer steps, rounded up to whole epochs (each ends with the validation the best checkpoint is chosen by)."""
    if n_train >= BUDGET_ROWS:
        return epochs
    return float(math.ceil(round(epochs * BUDGET_ROWS / n_train, 6)))


def phases_of(args, n_train: int) -> list[Phase]:
    """The phases this run trains on n_train rows, in order. --init-from with fp32-then-qat: that run is the FP32
    phase. Epochs given on the command line are trained as given; defaults follow the training set's size."""
    recipe = RECIPES.get(args.model, GENERIC_RECIPE)
    epochs = args.epochs if args.epochs is not None else default_epochs(recipe["epochs"], n_train)
    if args.recipe == "qat-from-pretrained" or args.no_qat:
        return [Phase("fp32" if args.no_qat else "qat", epochs, args.lr, qat=not args.no_qat)]
    qat_epochs = args.qat_epochs if args.qat_epochs is not None else default_epochs(QAT_PHASE["qat_epochs"], n_train)
    qat = Phase("qat", qat_epochs, args.qat_lr, qat=True, distill_weight=args.distill_weight,
                distill_temperature=args.distill_temperature)
    return [qat] if args.init_from else [Phase("fp32", epochs, args.lr, qat=False), qat]


def subsample(split, n, seed):
    if n is None or n >= len(split.texts):
        return split
    idx = np.random.RandomState(seed).permutation(len(split.texts))[:n]
    return type(split)([split.texts[i] for i in idx], [split.labels[i] for i in idx])


class EncodedDataset:
    """Tokenized texts without padding; DataCollatorWithPadding pads each batch. by_length: rows shortest first, for
    the splits only evaluated: batches of similar length pad less (SmSA's validation split: about half the tokens).
    FP32 scores do not depend on the batching; fake-quantized ones do a little (one activation scale per batch
    tensor, padding included), and less padding is closer to the deployed model scoring one text at a time."""

    def __init__(self, split, tokenizer, input_names, label2id, max_length, by_length=False):
        enc = tokenizer(split.texts, truncation=True, max_length=max_length)
        self.ids_key = input_names[0]  # the token ids (input_ids): their count is a row's length
        self.rows = [{**{k: enc[k][i] for k in input_names}, "labels": label2id[l]} for i, l in enumerate(split.labels)]
        if by_length:
            self.rows.sort(key=self.length_of)

    def length_of(self, row: dict) -> int:
        """A row's token count (rows are stored unpadded)."""
        return len(row[self.ids_key])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def reduce_range_for(target_cpu: str, cpu: dict) -> tuple[bool, str, str]:
    """reduce_range (7-bit weights) for a --target-cpu, the target it resolves to, and why. 8-bit int8 weights are computed exactly only by
    VNNI/AMX kernels; AVX2/AVX-512 without VNNI sum pairs of u8 x s8 products in saturating int16, which 7-bit
    weights never reach (2 x 255 x 64 < 32767)."""
    vnni = has_vnni(cpu)
    if target_cpu == "native":
        target_cpu = "vnni" if vnni else "portable"
        why = f"native: this CPU {'has' if vnni else 'lacks'} VNNI, so {target_cpu}"
    else:
        why = f"--target-cpu {target_cpu}"
    if target_cpu == "vnni":
        return False, "vnni", f"{why}: 8-bit weights, exact on x86 CPUs with VNNI or AMX only"
    return True, "portable", f"{why}: 7-bit weights, exact on every x86 CPU"


def quant_config_for(args) -> QuantConfig:
    """Quantization settings: weight type and granularity as given, reduce_range from --target-cpu."""
    cpu = cpu_info()
    reduce_range, target, rule = reduce_range_for(args.target_cpu, cpu)
    if args.weight_type == "uint8":  # ORT's U8U8 kernels widen to int16 products: exact on any x86 CPU
        rule += " (uint8 weights: U8U8 kernels, exact on every x86 CPU)"
    print(f"quantization: weights {args.weight_type}, per_channel={args.per_channel}, reduce_range={reduce_range} "
          f"({rule}), optimize_graph={args.optimize_graph}")
    return QuantConfig(weight_type=args.weight_type, per_channel=args.per_channel, reduce_range=reduce_range,
                       qat=not args.no_qat, optimize_graph=args.optimize_graph, target_cpu=target,
                       chosen_for={"cpu": cpu["model"], "vnni": has_vnni(cpu), "rule": rule})


def compute_metrics(eval_pred):
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    preds = np.argmax(logits, axis=-1)
    return {"accuracy": accuracy_score(labels, preds), "f1_macro": f1_score(labels, preds, average="macro")}


def class_weights(train_labels, label2id, mode):
    """Per-label loss weights in label-id order: all 1 for 'none' (plain cross-entropy); 'balanced' weights average 1
    over the training rows, so the loss keeps its scale."""
    if mode == "none":
        return np.ones(len(label2id))
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([label2id[l] for l in train_labels])
    return compute_class_weight("balanced", classes=np.arange(len(label2id)), y=y)


def weighted_cross_entropy(weights):
    """The Trainer's compute_loss_func: cross-entropy with per-label weights, summed and divided by the rows of the
    whole accumulated (and, under torchrun, all-process) batch, which the Trainer then neither divides by the
    accumulation steps nor averages over processes. Used with all-1 weights too: the model's own loss is a
    per-micro-batch mean, which the Trainer would mis-scale under gradient accumulation and torchrun (transformers
    5.x). In evaluation the same function gives the weighted eval_loss (the best epoch is chosen by macro-F1)."""
    import torch
    import torch.nn.functional as F

    w = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        total = F.cross_entropy(logits.float(), labels, weight=w.to(logits.device), reduction="sum")
        return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

    return loss


def distillation_loss(student_logits, teacher_logits, temperature: float, num_items):
    """T^2 x KL(softmax(teacher / T) || softmax(student / T)), summed over rows and divided by num_items like
    weighted_cross_entropy (Hinton et al.; the T^2 keeps its gradients on the scale of the cross-entropy's)."""
    import torch.nn.functional as F

    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1), F.softmax(teacher_logits.float() / t, dim=-1),
                  reduction="sum")
    return kl * t * t / num_items


def distillation_trainer(distill_weight: float, temperature: float):
    """A Trainer class whose training loss is (1 - w) x the compute_loss_func loss + w x distillation_loss from the
    rows' teacher_logits (computed once by teacher_logits(), so no teacher runs beside the student)."""
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            teacher = inputs.pop("teacher_logits", None)
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if teacher is not None and distill_weight > 0:
                n = num_items_in_batch if num_items_in_batch is not None else teacher.shape[0]
                kd = distillation_loss(outputs["logits"], teacher, temperature, n)
                loss = (1 - distill_weight) * loss + distill_weight * kd
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer


def teacher_logits(model, dataset, collator, batch_size: int) -> np.ndarray:
    """The model's logits (eval mode: no dropout, FP32) on every row of dataset, in the dataset's order; computed in
    batches of similar length (less padding), which the attention mask makes the same logits as any batching."""
    import torch

    model.eval()
    order = sorted(range(len(dataset)), key=lambda i: dataset.length_of(dataset[i]))
    logits = np.empty((len(dataset), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = collator([{k: v for k, v in dataset[i].items() if k != "labels"} for i in rows])
            logits[rows] = model(**{k: v.to(model.device) for k, v in batch.items()}).logits.float().cpu().numpy()
    return logits


class WithTeacher:
    """A dataset's rows with the teacher's logits of each row added (teacher_logits)."""

    def __init__(self, dataset, logits: np.ndarray):
        self.dataset, self.logits = dataset, logits

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {**self.dataset[i], "teacher_logits": self.logits[i].tolist()}


def load_pretrained(model_name, labels):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model(model_name)
    id2label = dict(enumerate(labels))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(labels), id2label=id2label, label2id={l: i for i, l in id2label.items()},
            ignore_mismatched_sizes=True, attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise PipelineError(f"could not load model {model_name!r} ({str(e).splitlines()[0][:200]}): pass a local folder "
                            f"or a hub name reachable from here")
    return tokenizer, model


# RoBERTa-style embeddings number positions from pad_token_id + 1, so that many position rows are never used.
ROBERTA_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm"}


def max_tokens(config) -> int | None:
    """The longest input the model's position embeddings allow (None: no limit in the config)."""
    n = getattr(config, "max_position_embeddings", None)
    if n is not None and config.model_type in ROBERTA_POSITIONS:
        n -= (config.pad_token_id or 0) + 1
    return n


def check_supported(model, args) -> None:
    """Refuse, before training, what the export or the simulation cannot handle."""
    limit = max_tokens(model.config)
    if limit is not None and args.max_length > limit:
        raise PipelineError(f"--max-length {args.max_length} is more than {args.model} takes ({limit} tokens): "
                            f"pass --max-length {limit} or less")
    if args.optimize_graph and model.config.model_type != "bert":
        raise PipelineError(f"--optimize-graph fuses BERT graphs only; {args.model} is {model.config.model_type!r}: "
                            f"train without --optimize-graph")


def training_arguments(args, phase: Phase, output_dir):
    """The Trainer's settings. The warm-up is a ratio of the training steps: transformers >= 5 (requirements.txt)
    reads a float warmup_steps below 1 as that ratio (its warmup_ratio is gone); 1 or more would mean steps."""
    import torch
    from transformers import TrainingArguments

    if not 0 <= args.warmup_ratio < 1:
        raise PipelineError(f"--warmup-ratio {args.warmup_ratio} is not a fraction of the training steps: use 0 <= r < 1")
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=phase.epochs, learning_rate=phase.lr,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_ratio, eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="f1_macro", greater_is_better=True,
        save_total_limit=1, save_only_model=True, logging_steps=10, report_to="none", seed=args.seed,
        remove_unused_columns=False,  # keep teacher_logits: the model's forward does not take them, the loss does
        data_seed=args.seed, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if args.group_by_length else "random")


def training_curve(log_history: list[dict]) -> dict:
    """The phase's training loss (every logging step) and validation scores (every epoch) from the Trainer's log."""
    return {"loss": [[h["epoch"], h["loss"]] for h in log_history if "loss" in h],
            "val_f1_macro": [[h["epoch"], h["eval_f1_macro"]] for h in log_history if "eval_f1_macro" in h],
            "val_loss": [[h["epoch"], h["eval_loss"]] for h in log_history if "eval_loss" in h]}


def best_epoch_eval(trainer) -> dict:
    """The validation scores of the epoch whose weights load_best_model_at_end restored (the first best macro-F1,
    as the Trainer picks it), from its log: evaluating those weights again would only repeat them."""
    evals = [h for h in trainer.state.log_history if "eval_f1_macro" in h]
    return max(evals, key=lambda h: h["eval_f1_macro"]) if evals else trainer.evaluate()


def train_phase(phase: Phase, model, data: dict, args, qcfg: QuantConfig, weights, ckpt_dir: Path):
    """Train model in place for one phase; returns the trained model, the phase's record for run_info.json, and
    whether this is the main process (the one that writes the run).
    A QAT phase starts with its start point on the validation split (fake-quantized: post-training quantization of
    the starting weights) and keeps it when no epoch beats it; a distilled phase learns from the start point's FP32
    logits."""
    import torch
    from transformers import set_seed

    from quant_sim import apply_fake_quant

    t0 = time.perf_counter()
    set_seed(args.seed)
    train_ds = data["train"]
    if phase.distill_weight > 0:
        train_ds = WithTeacher(train_ds, teacher_logits(model, train_ds, data["collator"], args.batch_size))
    time_s = {"teacher": time.perf_counter() - t0}
    start_state = copy.deepcopy(model.state_dict()) if phase.qat else None
    if phase.qat:
        apply_fake_quant(model, qcfg)
    training_args = training_arguments(args, phase, ckpt_dir / phase.name)
    trainer = distillation_trainer(phase.distill_weight, phase.distill_temperature)(
        model=model, args=training_args, train_dataset=train_ds, eval_dataset=data["val"],
        data_collator=data["collator"], compute_metrics=compute_metrics, compute_loss_func=weighted_cross_entropy(weights))
    record = {k: v for k, v in asdict(phase).items() if k != "name"}
    record["world_size"] = training_args.world_size
    t1 = time.perf_counter()
    start = trainer.evaluate() if phase.qat else None
    time_s["start_eval"] = time.perf_counter() - t1
    train_runtime = trainer.train().metrics["train_runtime"]
    # ranks leave train() together: none goes on (to remove the checkpoints) while another still loads the best one
    trainer.accelerator.wait_for_everyone()
    curve = training_curve(trainer.state.log_history)
    if start is not None:  # the QAT phase's start point (PTQ of the starting weights) at epoch 0
        curve["val_f1_macro"].insert(0, [0.0, start["eval_f1_macro"]])
        curve["val_loss"].insert(0, [0.0, start["eval_loss"]])
    val = best_epoch_eval(trainer)
    record.update(val_accuracy=val["eval_accuracy"], val_f1_macro=val["eval_f1_macro"], kept="trained")
    if start is not None:
        record.update(start_val_accuracy=start["eval_accuracy"], start_val_f1_macro=start["eval_f1_macro"])
        if start["eval_f1_macro"] > val["eval_f1_macro"]:
            with torch.no_grad():
                trainer.model.load_state_dict(start_state)
            record.update(val_accuracy=start["eval_accuracy"], val_f1_macro=start["eval_f1_macro"], kept="start")
    record["wall_s"] = time.perf_counter() - t0  # the whole phase: teacher logits, evaluations and training
    epoch_evals = sum(h["eval_runtime"] for h in trainer.state.log_history if "eval_runtime" in h)
    # where the phase's time went: teacher pass, evaluation of the start, training steps (with checkpoints), and the
    # evaluation after each epoch (inside the Trainer's train_runtime, taken out of it here)
    record["time_s"] = {**time_s, "train_steps": train_runtime - epoch_evals, "epoch_evals": epoch_evals}
    record["curve"] = curve
    print(f"{phase.name} phase: validation accuracy {record['val_accuracy']:.4f}, macro-F1 {record['val_f1_macro']:.4f}"
          + (f" (start point {start['eval_f1_macro']:.4f}: kept the {record['kept']} weights)" if start else ""))
    return trainer.model, record, trainer.is_world_process_zero()


def main():
    args = parse_args()
    import torch
    from transformers import DataCollatorWithPadding, set_seed

    from common import load_run_model
    from quant_sim import bake_weight_clip, plan_quantization, plan_weight_clip, remove_fake_quant

    rdir = run_dir(args)
    ensure_default_data(args.data_dir)
    cols = (args.text_column, args.label_column)
    train = subsample(load_split(args.data_dir, "train", *cols), args.max_train_samples, args.seed)
    val = load_split(args.data_dir, "val", *cols)
    test = load_split(args.data_dir, "test", *cols)
    labels = sorted_labels(train.labels)
    if len(labels) < 2:
        raise PipelineError(f"train.csv has a single label {labels}: a classifier needs at least two")
    label2id = {l: i for i, l in enumerate(labels)}
    check_known_labels(val, label2id, "val.csv")
    check_known_labels(test, label2id, "test.csv")
    print(f"run {rdir.name}: {len(train.texts)} train / {len(val.texts)} val rows, labels {labels}")

    set_seed(args.seed)
    tokenizer, model = load_pretrained(args.model, labels)
    if args.init_from:
        from common import MODELS_DIR

        init = load_run_model(MODELS_DIR / args.init_from)
        if init.config.id2label != model.config.id2label:
            raise PipelineError(f"run {args.init_from!r} has labels {list(init.config.id2label.values())}, not {labels}")
        model.load_state_dict(init.state_dict())
    check_supported(model, args)
    if args.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    input_names = model_input_names(tokenizer, model.config)
    data = {"train": EncodedDataset(train, tokenizer, input_names, label2id, args.max_length),
            "val": EncodedDataset(val, tokenizer, input_names, label2id, args.max_length, by_length=True),
            "collator": DataCollatorWithPadding(tokenizer)}

    qcfg = quant_config_for(args)
    try:
        plan_quantization(model, qcfg)
    except ValueError as e:
        raise PipelineError(f"{args.model}: {e}; train a model built from standard modules")
    phases = phases_of(args, len(train.texts))
    print("phases: " + "; ".join(f"{p.name} {p.epochs:g} epoch(s) at lr {p.lr:g}"
                                 + (f", distilled from the FP32 model (weight {p.distill_weight:g}, temperature "
                                    f"{p.distill_temperature:g})" if p.distill_weight else "") for p in phases))
    if qcfg.qat:
        print(f"fake INT8: {len(qcfg.quantized_linears)} Linear layers (MatMulInteger in ONNX), "
              f"{len(qcfg.quantized_embeddings)} embedding tables (Gather); FP32: attention scores, LayerNorm, GELU")
    weights = class_weights(train.labels, label2id, args.class_weight)
    print(f"loss: cross-entropy, label weights ({args.class_weight}) "
          + ", ".join(f"{l} {w:.2f}" for l, w in zip(labels, weights)))

    ckpt_dir = rdir / ".checkpoints"
    records = {}
    try:
        for phase in phases:
            if phase.qat and args.weight_clip == "mse":  # chosen on the weights the QAT phase starts from
                qcfg = plan_weight_clip(model, qcfg)
                print(f"weight clip: {sum(f < 1 for f in qcfg.weight_clip.values())} of {len(qcfg.weight_clip)} "
                      f"Linears clipped, median fraction of the range kept "
                      f"{statistics.median(qcfg.weight_clip.values()):.2f}")
            model, records[phase.name], main_process = train_phase(phase, model, data, args, qcfg, weights, ckpt_dir)
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if not main_process:
        return
    final = records[phases[-1].name]

    model = remove_fake_quant(model).cpu()
    weight_clip = qcfg.weight_clip
    qcfg = bake_weight_clip(model, qcfg)  # the saved weights are the clamped ones training simulated
    with atomic_files(rdir) as tmp:
        torch.save(model.state_dict(), tmp / STATE_DICT_FILE)
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        qcfg.save(tmp / QUANT_CONFIG_FILE)
        info = {
            "model": args.model, "model_source": resolve_model(args.model), "data_dir": str(Path(args.data_dir).resolve()),
            "text_column": args.text_column, "label_column": args.label_column, "max_length": args.max_length,
            "labels": labels, "input_names": input_names, "qat": qcfg.qat, "seed": args.seed,
            "recipe": "fp32" if args.no_qat else args.recipe, "phases": records,
            "epochs": phases[0].epochs, "lr": phases[0].lr, "batch_size": args.batch_size, "n_train": len(train.texts),
            "init_from": args.init_from, "freeze_embeddings": args.freeze_embeddings,
            "group_by_length": args.group_by_length, "class_weight": args.class_weight,
            "weight_clip": args.weight_clip, "weight_clip_fractions": weight_clip,
            "loss_weights": dict(zip(labels, map(float, weights))), "target_cpu": qcfg.target_cpu,
            "world_size": final["world_size"],
            "val_accuracy": final["val_accuracy"], "val_f1_macro": final["val_f1_macro"],
        }
        (tmp / RUN_INFO_FILE).write_text(json.dumps(info, indent=2))
        stale = remove_downstream(rdir, results_dir(args))  # made from the weights this training replaces
    if stale:
        print(f"retrained run {rdir.name}: removed what its earlier training was exported, quantized and evaluated "
              f"into: {', '.join(str(p) for p in stale)}")
    print(f"wrote {rdir}/{{{STATE_DICT_FILE}, config.json, tokenizer, {QUANT_CONFIG_FILE}, {RUN_INFO_FILE}}}")
    print(f"next: python export_to_onnx.py --run-name {rdir.name}")


if __name__ == "__main__":
    main_guard(main)
