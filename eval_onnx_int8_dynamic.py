"""Step 4: evaluate the INT8 ONNX model (model_qat_int8_dynamic.onnx) on the test split with ONNX Runtime.

Accuracy, macro and per-class precision/recall/F1, samples per second, size; writes
results/<run>/metrics_onnx_int8_dynamic.json and confusion_matrix_onnx_int8_dynamic.png, and prints the agreement
of its predictions with the other stages already evaluated (eval_eager_qat.py, eval_onnx_qat.py).

    python eval_onnx_int8_dynamic.py [--run-name NAME] [--batch-size 32] [--threads N]
"""

from common import INT8_FILE, QUANT_CONFIG_FILE, base_parser, load_run, main_guard, require_file
from evaluation import evaluate_onnx
from quant_sim import QuantConfig

STAGE = "onnx_int8_dynamic"


def main():
    args = base_parser(__doc__).parse_args()
    rdir, _ = load_run(args)
    path = require_file(rdir / INT8_FILE, "quantize_onnx_dynamic.py")
    qcfg = QuantConfig.load(require_file(rdir / QUANT_CONFIG_FILE, "train_eager_qat.py"))
    evaluate_onnx(args, rdir, STAGE, path, extra={"quant_config": qcfg.settings()})


if __name__ == "__main__":
    main_guard(main)
