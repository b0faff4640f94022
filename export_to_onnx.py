"""Step 2: export the QAT-trained weights as a clean FP32 ONNX model (no fake-quant modules).

Reads models/<run>/model_qat.pth (torch.load(weights_only=True)) and config.json; writes models/<run>/model_qat.onnx
with inputs input_ids, attention_mask (+ token_type_ids where the model uses them), output logits, dynamic batch
and sequence axes. Then runs a real validation batch through ONNX Runtime and PyTorch and fails above 1e-4 max
absolute logit difference. Records in models/<run>/lineage.json the sha256 of the ONNX file and of the
model_qat.pth and config.json it was made from.

    python export_to_onnx.py [--run-name NAME]
"""

import numpy as np

from common import (
    ONNX_FILE,
    STATE_DICT_FILE,
    PipelineError,
    atomic_output,
    base_parser,
    check_unchanged,
    file_hashes,
    file_size_mb,
    load_run_model,
    load_split,
    main_guard,
    make_batches,
    record_lineage,
)
from runtime import ort_session
from run import load_run

OPSET = 17
MAX_ABS_DIFF = 1e-4


def parse_args():
    p = base_parser(__doc__)
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (>= 14)")
    return p.parse_args()


def export(model, example: dict, path, opset: int) -> None:
    import torch

    names = list(example)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(model, (), str(path), kwargs={k: torch.from_numpy(v) for k, v in example.items()},
                          input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False)


def max_logit_diff(model, session, batch: dict) -> float:
    import torch

    onnx_logits = session.run(["logits"], batch)[0]
    with torch.no_grad():
        torch_logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


def check_batches(batches: list[dict]) -> list[dict]:
    """Real validation batches to compare ONNX with PyTorch on, each of another shape: the largest (padding and
    truncation exercised, also the traced one) and the smallest, whose other batch size / length proves the dynamic
    axes. When every batch has one shape, the largest batch's shortest row alone, unpadded, stands in for it."""
    largest = max(batches, key=lambda b: b["input_ids"].size)
    smallest = min(batches, key=lambda b: b["input_ids"].size)
    if smallest["input_ids"].shape == largest["input_ids"].shape:
        row = int(largest["attention_mask"].sum(1).argmin())
        length = int(largest["attention_mask"][row].sum())
        smallest = {k: v[row:row + 1, :length] for k, v in largest.items()}
    return [largest] if smallest["input_ids"].shape == largest["input_ids"].shape else [largest, smallest]


def main():
    args = parse_args()
    if args.opset < 14:
        raise PipelineError(f"--opset {args.opset} is too old: use 14 or newer")
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    run = load_run(args)
    rdir = run.dir
    made_from = file_hashes(rdir, [STATE_DICT_FILE, "config.json"])  # before loading: what is read is what is recorded
    model = load_run_model(rdir)
    check_unchanged(rdir, made_from)
    tokenizer = AutoTokenizer.from_pretrained(rdir)
    val = load_split(run.data_dir, "val", run.text_column, run.label_column)
    batches = check_batches([b for _, b in make_batches(val.texts, tokenizer, run.input_names, run.max_length,
                                                         args.batch_size)])

    out = rdir / ONNX_FILE
    with atomic_output(out) as tmp:
        export(model, batches[0], tmp, args.opset)
        session = ort_session(tmp, args.threads)
        for batch in batches:
            diff = max_logit_diff(model, session, batch)
            shape = "x".join(map(str, batch["input_ids"].shape))
            print(f"ONNX vs PyTorch on a {shape} validation batch (batch x tokens): max |logit diff| = {diff:.2e}")
            if not diff <= MAX_ABS_DIFF:
                raise PipelineError(f"exported logits differ from PyTorch by {diff:.2e} > {MAX_ABS_DIFF} on a "
                                    f"{shape} batch: export not written")
    record_lineage(rdir, ONNX_FILE, made_from)
    print(f"wrote {out} ({file_size_mb(out):.1f} MB, opset {args.opset}, inputs {list(run.input_names)})")
    print(f"next: python quantize_onnx_dynamic.py --run-name {rdir.name}")


if __name__ == "__main__":
    main_guard(main)
