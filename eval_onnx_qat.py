"""Evaluate the FP32 ONNX model (model_qat.onnx) on the test split with ONNX Runtime, the same way as step 4.

Writes results/<run>/metrics_onnx_qat.json and confusion_matrix_onnx_qat.png.

    python eval_onnx_qat.py [--run-name NAME] [--batch-size 32] [--threads N]
"""

from common import ONNX_FILE, base_parser, load_run, main_guard, require_file
from evaluation import evaluate_onnx

STAGE = "onnx_qat"


def main():
    args = base_parser(__doc__).parse_args()
    rdir, _ = load_run(args)
    path = require_file(rdir / ONNX_FILE, "export_to_onnx.py")
    evaluate_onnx(args, rdir, STAGE, path)


if __name__ == "__main__":
    main_guard(main)
