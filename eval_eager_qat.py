"""Evaluate the PyTorch model (model_qat.pth) on the test split, with the fake INT8 quantization it was trained
with switched on: the simulation of what ONNX Runtime's INT8 model computes, on identical batches.

Writes results/<run>/metrics_eager_qat.json (or metrics_eager_fp32.json with --no-fake-quant, the default for a
run trained with --no-qat) and the confusion matrix PNG.

    python eval_eager_qat.py [--run-name NAME] [--batch-size 32] [--threads N] [--no-fake-quant | --fake-quant]
"""

from common import (QUANT_CONFIG_FILE, STATE_DICT_FILE, base_parser, check_unchanged, file_hashes, load_run_model,
                    main_guard)
from evaluation import EvalSettings, add_per_text_option, evaluate
from quant_sim import apply_fake_quant
from run import load_run
from runtime import torch_predict_fn


def parse_args():
    p = base_parser(__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fake-quant", dest="fake_quant", action="store_true", default=None,
                   help="simulate INT8 (default for QAT runs)")
    g.add_argument("--no-fake-quant", dest="fake_quant", action="store_false",
                   help="plain FP32 PyTorch (default for --no-qat runs)")
    add_per_text_option(p)
    return p.parse_args()


def main():
    args = parse_args()
    run = load_run(args)
    qcfg = run.quant_config()
    fake_quant = qcfg.qat if args.fake_quant is None else args.fake_quant
    # What this stage measures: the weights and config, hashed before they are loaded, so a file replaced in between
    # is not measured under the old hash; + the quantization settings it simulates, as the Run read them.
    lineage = file_hashes(run.dir, [STATE_DICT_FILE, "config.json"])
    if fake_quant:
        lineage[QUANT_CONFIG_FILE] = run.quant_sha256
    model = load_run_model(run.dir)
    check_unchanged(run.dir, lineage)
    if fake_quant:
        apply_fake_quant(model, qcfg)
    extra = {"fake_quant": fake_quant, "quant_config": qcfg.settings()}
    evaluate(run, EvalSettings.from_args(args), "eager_qat" if fake_quant else "eager_fp32", run.file(STATE_DICT_FILE),
             torch_predict_fn(model, args.threads), lineage, extra=extra)


if __name__ == "__main__":
    main_guard(main)
