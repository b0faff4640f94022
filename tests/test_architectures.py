"""The pipeline on other tokenizer and model families, end to end on tiny models, and what it refuses.

XLM-R style (SentencePiece Unigram, <s>/</s>, pad id 1, no token_type_ids, RoBERTa position ids: the family of
the default multilingual-e5-small's tokenizer and of XLM-R) and DistilBERT (no token types, another head)."""

import json

import pytest
import torch
from helpers import run_step, run_steps, tiny_workspace
from test_pipeline import assert_one_line_error
from tiny_model import make_tiny_distilbert, make_tiny_xlmr

FAMILIES = {"xlmr": make_tiny_xlmr, "distilbert": make_tiny_distilbert}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    w = tiny_workspace(tmp_path_factory.mktemp("arch"))
    texts = [l.split(",")[0] for l in (w["data"] / "train.csv").read_text().splitlines()[1:]]
    w["models"] = {name: make(w["tmp"] / f"tiny-{name}", texts) for name, make in FAMILIES.items()}
    return w


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pipeline_end_to_end(workspace, family):
    w, run = workspace, f"tiny-{family}"
    run_step("train_eager_qat.py", "--model", w["models"][family], "--data-dir", w["data"], "--run-name", run,
             "--max-length", 48, "--lr", "2e-3", "--batch-size", 16, "--epochs", 1, "--qat-epochs", 1, env=w["env"])
    info = json.loads((w["tmp"] / "models" / run / "run_info.json").read_text())
    assert info["input_names"] == ["input_ids", "attention_mask"]  # no token_type_ids in these families
    run_steps(run, "export_to_onnx.py", "quantize_onnx_dynamic.py", "eval_eager_qat.py", "eval_onnx_int8_dynamic.py",
              env=w["env"])
    m = json.loads((w["tmp"] / "results" / run / "metrics_onnx_int8_dynamic.json").read_text())
    a = m["agreement"]["eager_qat"]
    assert a["agreement"] == 1.0 and a["max_abs_logit_diff"] <= 1e-4, a
    qcfg = json.loads((w["tmp"] / "models" / run / "quant_config.json").read_text())
    state = torch.load(w["tmp"] / "models" / run / "model_qat.pth", weights_only=True)
    assert len(qcfg["quantized_linears"]) == sum(k.endswith(".weight") and state[k].dim() == 2 and "embeddings" not in k
                                                  for k in state)  # every Linear, head included


def test_xlmr_pad_id_is_one(workspace):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(workspace["models"]["xlmr"])
    enc = tok(["saya suka", "makanan ini enak sekali loh"], padding=True)
    assert tok.pad_token_id == 1 and enc["input_ids"][0][-1] == 1 and enc["input_ids"][0][0] == 0
    assert "token_type_ids" not in tok.model_input_names


@pytest.mark.parametrize("family, max_length, limit", [("xlmr", 129, 128), ("distilbert", 200, 128)])
def test_max_length_beyond_positions_is_refused(workspace, family, max_length, limit):
    w = workspace
    proc = run_step("train_eager_qat.py", "--model", w["models"][family], "--data-dir", w["data"], "--run-name",
                    f"too-long-{family}", "--max-length", max_length, "--epochs", 1, env=w["env"], check=False)
    assert_one_line_error(proc, f"--max-length {max_length}", f"{limit} tokens")
    assert "Epoch" not in proc.stdout + proc.stderr  # refused before training


def test_optimize_graph_refused_for_non_bert(workspace):
    w = workspace
    proc = run_step("train_eager_qat.py", "--model", w["models"]["xlmr"], "--data-dir", w["data"], "--run-name",
                    "opt-xlmr", "--optimize-graph", "--epochs", 1, env=w["env"], check=False)
    assert_one_line_error(proc, "--optimize-graph", "xlm-roberta")


def test_linear_subclass_is_refused():
    from quant_sim import QuantConfig, plan_quantization

    class ScaledLinear(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), ScaledLinear(4, 2))
    with pytest.raises(ValueError, match=r"1 module\(s\) subclass.*1 \(ScaledLinear\)"):
        plan_quantization(model, QuantConfig())
