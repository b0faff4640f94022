"""Step 1: fine-tune a BERT-family classifier with quantization-aware training (QAT).

The fake quantization (quant_sim.py) reproduces what ONNX Runtime's quantize_dynamic will do to the exported
graph, so the weights are trained for the arithmetic they will be deployed with. Writes to models/<run>/:
model_qat.pth (plain FP32 state_dict), config.json (id2label/label2id), tokenizer files, quant_config.json,
run_info.json. Uses the Hugging Face Trainer, so `torchrun`/`accelerate launch` spread it over devices.

    python train_eager_qat.py                                   # offline default model and data
    python train_eager_qat.py --model indobenchmark/indobert-base-p1 --data-dir combined
    python train_eager_qat.py --no-qat --run-name minilm-fp32   # plain FP32 fine-tuning (PTQ baseline)
"""

import argparse
import json
import platform
import shutil
from pathlib import Path

import numpy as np

from common import (QUANT_CONFIG_FILE, cpu_info, has_vnni, RUN_INFO_FILE, STATE_DICT_FILE, PipelineError, atomic_files, base_parser,
                    check_known_labels, load_split, main_guard, model_input_names,
                    remove_downstream, results_dir, run_dir, sorted_labels)
from prepare_data import ensure_default_data
from prepare_model import resolve_model
from quant_sim import WEIGHT_TYPES, QuantConfig


# Learning rate and epochs when not given. multilingual-e5-small (the default) starts with a random pooler and head
# and learns slowly at BERT's usual 5e-5: on 2,000 SmSA rows (seed 0) 5e-5 x 1 epoch reached INT8 test macro-F1
# 0.50, 1e-4 x 2 epochs 0.78 (measurements quoted in issue 8, Intel Xeon), and 0.81 with the class-balanced loss
# (--class-weight, default for every model; README_DEPLOYMENT.md §3, AMD EPYC). Other models keep BERT's recipe.
GENERIC_RECIPE = {"lr": 5e-5, "epochs": 3}
RECIPES = {"default": {"lr": 1e-4, "epochs": 2}}


def parse_args():
    p = base_parser(__doc__, training=True)
    p.add_argument("--epochs", type=float, default=None,
                   help=f"default: {RECIPES['default']['epochs']:g} for --model default, {GENERIC_RECIPE['epochs']:g} for others")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate; default: {RECIPES['default']['lr']:g} for --model default, "
                        f"{GENERIC_RECIPE['lr']:g} for others")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--max-train-samples", type=int, default=None, help="seeded random subset of train.csv")
    p.add_argument("--no-qat", action="store_true", help="plain FP32 fine-tuning (the post-training quantization baseline)")
    p.add_argument("--init-from", default=None,
                   help="start from this run's model_qat.pth instead of the pretrained classifier head "
                        "(QAT fine-tune of an FP32 fine-tuned run); its labels must match")
    p.add_argument("--weight-type", choices=WEIGHT_TYPES, default="int8", help="quantize_dynamic weight type")
    p.add_argument("--per-channel", action="store_true", help="per-output-channel weight scales")
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
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="7-bit weights, which avoid the int16 saturation of AVX2/AVX-512 INT8 kernels without VNNI; "
                        "default: on when this CPU has no VNNI (pass it explicitly when the deploy CPU differs)")
    args = p.parse_args()
    recipe = RECIPES.get(args.model, GENERIC_RECIPE)
    for key in ("epochs", "lr"):
        if getattr(args, key) is None:
            setattr(args, key, recipe[key])
    return args


def subsample(split, n, seed):
    if n is None or n >= len(split.texts):
        return split
    idx = np.random.RandomState(seed).permutation(len(split.texts))[:n]
    return type(split)([split.texts[i] for i in idx], [split.labels[i] for i in idx])


class EncodedDataset:
    """Tokenized texts without padding; DataCollatorWithPadding pads each batch."""

    def __init__(self, split, tokenizer, input_names, label2id, max_length):
        enc = tokenizer(split.texts, truncation=True, max_length=max_length)
        self.rows = [{**{k: enc[k][i] for k in input_names}, "labels": label2id[l]} for i, l in enumerate(split.labels)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def quant_config_for_cpu(args) -> QuantConfig:
    """Quantization settings; reduce_range follows ONNX Runtime's advice for x86 unless given: on without VNNI."""
    cpu = cpu_info()
    vnni = has_vnni(cpu)
    if args.reduce_range is None:
        reduce_range = not vnni and platform.machine().lower() in ("x86_64", "amd64")
        rule = f"auto: reduce_range={reduce_range} because this CPU {'has' if vnni else 'lacks'} VNNI"
    else:
        reduce_range, rule = args.reduce_range, "set by --reduce-range/--no-reduce-range"
    print(f"quantization: weights {args.weight_type}, per_channel={args.per_channel}, reduce_range={reduce_range} "
          f"({rule}), optimize_graph={args.optimize_graph}")
    return QuantConfig(weight_type=args.weight_type, per_channel=args.per_channel, reduce_range=reduce_range,
                       qat=not args.no_qat, optimize_graph=args.optimize_graph, chosen_for={"cpu": cpu["model"], "vnni": vnni, "rule": rule})


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


def training_arguments(args, output_dir):
    """The Trainer's settings. The warm-up is a ratio of the training steps: transformers >= 5 (requirements.txt)
    reads a float warmup_steps below 1 as that ratio (its warmup_ratio is gone); 1 or more would mean steps."""
    import torch
    from transformers import TrainingArguments

    if not 0 <= args.warmup_ratio < 1:
        raise PipelineError(f"--warmup-ratio {args.warmup_ratio} is not a fraction of the training steps: use 0 <= r < 1")
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_ratio, eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="f1_macro", greater_is_better=True,
        save_total_limit=1, save_only_model=True, logging_steps=10, report_to="none", seed=args.seed,
        data_seed=args.seed, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if args.group_by_length else "random")


def main():
    args = parse_args()
    import torch
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    from common import load_run_model
    from quant_sim import apply_fake_quant, plan_quantization, remove_fake_quant

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
    train_ds = EncodedDataset(train, tokenizer, input_names, label2id, args.max_length)
    val_ds = EncodedDataset(val, tokenizer, input_names, label2id, args.max_length)
    collator = DataCollatorWithPadding(tokenizer)

    qcfg = quant_config_for_cpu(args)
    try:
        plan_quantization(model, qcfg)
    except ValueError as e:
        raise PipelineError(f"{args.model}: {e}; train a model built from standard modules")
    if qcfg.qat:
        apply_fake_quant(model, qcfg)
        print(f"fake INT8: {len(qcfg.quantized_linears)} Linear layers (MatMulInteger in ONNX), "
              f"{len(qcfg.quantized_embeddings)} embedding tables (Gather); FP32: attention scores, LayerNorm, GELU")

    ckpt_dir = rdir / ".checkpoints"
    training_args = training_arguments(args, ckpt_dir)
    weights = class_weights(train.labels, label2id, args.class_weight)
    print(f"loss: cross-entropy, label weights ({args.class_weight}) "
          + ", ".join(f"{l} {w:.2f}" for l, w in zip(labels, weights)))
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=val_ds,
                      data_collator=collator, compute_metrics=compute_metrics,
                      compute_loss_func=weighted_cross_entropy(weights))
    try:
        trainer.train()
        val_metrics = trainer.evaluate()
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if not trainer.is_world_process_zero():
        return
    print(f"best validation: accuracy {val_metrics['eval_accuracy']:.4f}, macro-F1 {val_metrics['eval_f1_macro']:.4f}")

    model = remove_fake_quant(trainer.model).cpu()
    with atomic_files(rdir) as tmp:
        torch.save(model.state_dict(), tmp / STATE_DICT_FILE)
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        qcfg.save(tmp / QUANT_CONFIG_FILE)
        info = {
            "model": args.model, "model_source": resolve_model(args.model), "data_dir": str(Path(args.data_dir).resolve()),
            "text_column": args.text_column, "label_column": args.label_column, "max_length": args.max_length,
            "labels": labels, "input_names": input_names, "qat": qcfg.qat, "seed": args.seed,
            "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "n_train": len(train.texts),
            "init_from": args.init_from, "freeze_embeddings": args.freeze_embeddings,
            "group_by_length": args.group_by_length, "class_weight": args.class_weight,
            "loss_weights": dict(zip(labels, map(float, weights))),
            "world_size": training_args.world_size,
            "val_accuracy": val_metrics["eval_accuracy"], "val_f1_macro": val_metrics["eval_f1_macro"],
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
