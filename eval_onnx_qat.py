"""Evaluate the FP32 ONNX model (model_qat.onnx) on the test split with ONNX Runtime, the same way as step 4.

Writes results/<run>/metrics_onnx_qat.json and confusion_matrix_onnx_qat.png.

    python eval_onnx_qat.py [--run-name NAME] [--batch-size 32] [--threads N]
"""

from common import ONNX_FILE, base_parser, main_guard
from evaluation import EvalSettings, evaluate_onnx
from run import load_run

STAGE = "onnx_qat"


def main():
    args = base_parser(__doc__).parse_args()
    run = load_run(args)
    evaluate_onnx(run, EvalSettings.from_args(args), STAGE, run.file(ONNX_FILE))


if __name__ == "__main__":
    main_guard(main)
