"""Step 4: evaluate the INT8 ONNX model (model_qat_int8_dynamic.onnx) on the test split with ONNX Runtime.

Accuracy, macro and per-class precision/recall/F1, samples per second, size; writes
results/<run>/metrics_onnx_int8_dynamic.json and confusion_matrix_onnx_int8_dynamic.png, and prints the agreement
of its predictions with the other stages already evaluated (eval_eager_qat.py, eval_onnx_qat.py).

--per-text evaluates every text as its own batch, without padding, as serve.py answers by default
(Predictor(per_text=True)); ONNX Runtime's per-tensor activation scales make a text's result depend on its batch,
so this is the accuracy of the per-text service. It writes metrics_onnx_int8_dynamic_per_text.json (stage
onnx_int8_dynamic_per_text) and its confusion matrix.

    python eval_onnx_int8_dynamic.py [--run-name NAME] [--batch-size 32] [--threads N] [--per-text]
"""

from common import INT8_FILE, base_parser, main_guard
from evaluation import EvalSettings, add_per_text_option, evaluate_onnx
from run import load_run

STAGE = "onnx_int8_dynamic"


def main():
    p = base_parser(__doc__)
    add_per_text_option(p)
    args = p.parse_args()
    run = load_run(args)
    settings = {k: run.quant.get(k) for k in ("weight_type", "per_channel", "reduce_range", "optimize_graph",
                                               "target_cpu", "chosen_for")}
    evaluate_onnx(run, EvalSettings.from_args(args), STAGE, run.file(INT8_FILE), extra={"quant_config": settings})


if __name__ == "__main__":
    main_guard(main)
