"""The INT8 model of a run as a Python predictor: texts in, labels and per-label probabilities out.

    from predictor import Predictor
    p = Predictor("models/indobert-base-p1-qat-int8-smsa")  # one text per call, as serve.py and predict.py
    p.predict(["makanan nya enak sekali"])
    # [{'label': 'positive', 'score': 0.91, 'probabilities': {'negative': 0.04, 'neutral': 0.05, 'positive': 0.91}}]
    p.predict("makanan nya enak sekali")   # one string: one result (a dict, not a list)

Batching: by default (batch_size=1) every text runs as its own batch, without padding: each text's result depends
on that text only (deterministic per text), and equals what serve.py (--batch-mode per-text) and predict.py
(--batch-size 1) answer for it. `Predictor(..., batch_size=32)` sorts the texts by token length and pads them per
batch (common.make_batches, the batches the eval scripts use): faster where batching pays, but ONNX Runtime's
dynamic quantization computes one activation scale per tensor, so a text's logits then depend on the other rows and
the padding of its batch (benchmarks/batch_dependence.py measures how often the label changes).

Texts: every item must be a str (TypeError otherwise) with some content and valid Unicode (ValueError naming the
index otherwise: an empty or whitespace-only text, or a lone surrogate such as JSON's "\\ud800", which the tokenizer
cannot take), as serve.py refuses them with 422.

The INT8 model is refused on a CPU whose ONNX Runtime kernels compute it otherwise than it was trained
(common.check_int8_cpu: 8-bit weights, quantized with --target-cpu vnni, need VNNI). The model file must be the one the run's lineage.json records as made from the run's current model_qat.pth and
config.json (common.verify_lineage): a model left over from an earlier training of the run is refused.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from common import (INT8_FILE, QUANT_CONFIG_FILE, PipelineError, check_int8_cpu, check_unchanged, make_batches,
                    verify_lineage)
from run import Run
from runtime import ort_predict_fn, ort_session, softmax  # noqa: F401  (softmax: for the Predictor's callers)


class Predictor:
    """A run folder's tokenizer, labels and ONNX model (by default the INT8 one); thread-safe.

    predict(texts) takes a list of texts and returns a list of results, one per text; predict("a text") takes a
    single string and returns its one result (a dict). batch_size=1 (default): each text scored alone, as the
    service; per_text=True forces it whatever batch_size says. Refused texts: see the module docstring."""

    def __init__(self, run, threads: int | None = None, model_file: str = INT8_FILE, batch_size: int = 1,
                 per_text: bool = False):
        """run: a run folder, or a run.Run (whose max_length, e.g. a caller's override, is then used)."""
        from transformers import AutoTokenizer

        self.run = run if isinstance(run, Run) else Run.load(run)
        self.run_dir = self.run.dir
        if batch_size < 1:
            raise PipelineError(f"batch_size must be at least 1, got {batch_size}")
        self.labels = list(self.run.labels)
        if not self.labels:
            raise PipelineError(f"{self.run_dir / 'config.json'} has no id2label: re-run train_eager_qat.py")
        self.input_names = list(self.run.input_names)
        self.max_length = self.run.max_length
        self.batch_size = 1 if per_text else int(batch_size)
        self.threads = int(threads or os.cpu_count() or 1)
        self.model_path = self.run.file(model_file)
        if model_file == INT8_FILE:  # never run it where ONNX Runtime computes it otherwise than it was trained
            check_int8_cpu(self.model_path, self.run.quant)
        # The model must be made from this run's current weights and config (not left over from an earlier
        # training); lineage[model_file] is its sha256, taken before the session reads the file and checked after.
        self.lineage = verify_lineage(self.run_dir, model_file)
        if QUANT_CONFIG_FILE in self.lineage:  # the settings checked above are those the model was quantized with
            self.run.check_quant_is(self.lineage[QUANT_CONFIG_FILE])
        self.tokenizer = AutoTokenizer.from_pretrained(self.run_dir)
        # A fast tokenizer's truncation settings are mutable state: concurrent calls can fail ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        self.session = ort_session(self.model_path, self.threads)
        check_unchanged(self.run_dir, {model_file: self.lineage[model_file]})
        self.forward = ort_predict_fn(self.session, len(self.labels), self.model_path)
        # self.forward: one tokenized batch {input name: int64 array} -> logits (what the eval scripts time)
        # The output width may be symbolic in the graph: check it on a real forward pass too.
        width = self.predict_logits(["ok"]).shape[-1]
        if width != len(self.labels):
            raise PipelineError(f"{self.model_path} outputs {width} logits but the run has {len(self.labels)} labels "
                                f"({', '.join(self.labels)}): re-export this run")

    @property
    def per_text(self) -> bool:
        return self.batch_size == 1

    def batches(self, texts):
        with self._tokenizer_lock:
            return make_batches(texts, self.tokenizer, self.input_names, self.max_length, self.batch_size)

    def predict_logits(self, texts) -> np.ndarray:
        """Logits (n_texts, n_labels), float32, in the order of texts; for a single string, its row (n_labels,)."""
        if isinstance(texts, str):
            return self.predict_logits([texts])[0]
        texts = list(texts)
        check_texts(texts)
        logits = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for idx, batch in (self.batches(texts) if texts else []):
            logits[idx] = np.asarray(self.forward(batch), dtype=np.float32)
        return logits

    def predict(self, texts) -> list[dict] | dict:
        """For each text: {'label', 'score' (its probability), 'probabilities' {label: p}}; for a single string
        (not a list of its characters), its one result."""
        if isinstance(texts, str):
            return self.predict([texts])[0]
        probs = softmax(self.predict_logits(texts))
        out = []
        for row in probs:
            k = int(row.argmax())
            out.append({"label": self.labels[k], "score": float(row[k]),
                        "probabilities": {l: float(p) for l, p in zip(self.labels, row)}})
        return out


def check_texts(texts: list) -> None:
    """Every item a str (TypeError) with content and valid Unicode (ValueError), each error naming the index."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings; item {i} is {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"text {i} is empty or only whitespace: every text needs some content")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text {i} is not valid Unicode ({e.reason} at character {e.start}: a lone surrogate "
                             f"such as JSON's \\ud800?): the tokenizer cannot take it")
