"""Running a model: ONNX Runtime sessions, batch -> logits functions for ONNX and PyTorch models, and the loop
over the evaluations' batches. Below every step and Predictor (it imports nothing of the project but common)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from common import PipelineError


def ort_session(path: Path, threads: int):
    """An ONNX Runtime CPU session; a file it cannot load is a one-line error."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PipelineError(f"{path} could not be loaded by ONNX Runtime ({str(e).splitlines()[0][:160]}): "
                            f"re-create it with export_to_onnx.py / quantize_onnx_dynamic.py")


def ort_predict_fn(session, n_labels: int, path: Path):
    """A function batch -> logits for an ONNX Runtime session, after checking it outputs one logit per label."""
    out = session.get_outputs()[0]
    if isinstance(out.shape[-1], int) and out.shape[-1] != n_labels:
        raise PipelineError(f"{path} outputs {out.shape[-1]} logits but the run has {n_labels} labels: "
                            f"re-export this run")
    names = [i.name for i in session.get_inputs()]
    return lambda batch: session.run([out.name], {k: batch[k] for k in names})[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def run_batches(predict, batches, n: int) -> tuple[np.ndarray, float]:
    """Logits in the original row order, and the seconds the forward passes took."""
    logits, elapsed = None, 0.0
    for idx, batch in batches:
        t0 = time.perf_counter()
        out = np.asarray(predict(batch), dtype=np.float32)
        elapsed += time.perf_counter() - t0
        if logits is None:
            logits = np.zeros((n, out.shape[-1]), dtype=np.float32)
        logits[idx] = out
    return logits, elapsed


def torch_predict_fn(model, threads: int):
    import torch

    torch.set_num_threads(threads)

    @torch.inference_mode()
    def predict(batch):
        return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()

    return predict
