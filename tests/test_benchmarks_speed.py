"""benchmarks/speed.py --smoke end to end, so the benchmark never rots: a tiny BERT and a tiny XLM-R-style model (a
SentencePiece-like tokenizer without token_type_ids, like the multilingual-e5 family) given by folder."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
REQUIRED = ("model", "backend", "batch_size", "seq_len", "threads", "median_ms", "size_mb")
BACKENDS = {"torch_fp32", "ort_fp32", "ort_int8"}


def make_tiny_xlmr(folder: Path, texts, vocab_size: int = 200, hidden: int = 32, layers: int = 2) -> Path:
    """A random XLM-RoBERTa classifier with a Unigram tokenizer trained on the fly (<s> text </s>, no segments)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special,
                                                           unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("<s>", "</s>")])
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=len(fast), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                           intermediate_size=hidden * 2, max_position_embeddings=160, type_vocab_size=1,
                           pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id,
                           eos_token_id=fast.eos_token_id)
    XLMRobertaForSequenceClassification(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory):
    from prepare_data import prepare

    data = tmp_path_factory.mktemp("data")
    prepare(data)
    texts = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)["text"].tolist()
    return make_tiny_xlmr(tmp_path_factory.mktemp("models") / "tiny-xlmr", texts)


def test_models_option_resolves_default_and_folders(xlmr):
    from prepare_model import resolve_model
    from speed import model_specs

    specs = model_specs(f"default,bert-base-shaped,{xlmr}")
    assert list(specs) == ["default", "bert-base-shaped", "tiny-xlmr"]
    assert specs["default"]["path"] == specs["default"]["tokenizer"] == resolve_model("default")
    assert specs["bert-base-shaped"]["kind"] == "config" and specs["bert-base-shaped"]["tokenizer"] == resolve_model("default")
    assert specs["tiny-xlmr"] == {**specs["tiny-xlmr"], "kind": "pretrained", "path": str(xlmr), "tokenizer": str(xlmr)}
    with pytest.raises(SystemExit, match="no such folder"):
        model_specs(str(xlmr.parent / "missing-model"))


def test_speed_benchmark_smoke(tmp_path, xlmr):
    out_json = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--smoke", "--json", str(out_json),
                           "--out-dir", str(tmp_path), "--models", f"tiny,{xlmr}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    records = json.loads(out_json.read_text())
    assert isinstance(records, list) and records
    for r in records:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, (missing, r)
    meta = json.loads((tmp_path / "speed.meta.json").read_text())
    assert list(meta["models"]) == ["tiny", "tiny-xlmr"]
    # the tiny BERT reads the texts with the default model's tokenizer (multilingual-e5-small: no token types)
    assert meta["models"]["tiny"]["input_names"] == ["input_ids", "attention_mask"]
    assert meta["models"]["tiny-xlmr"]["input_names"] == ["input_ids", "attention_mask"]  # no segments in XLM-R
    for model in ("tiny", "tiny-xlmr"):
        timed = [r for r in records if r["model"] == model and r["median_ms"] is not None]
        assert {r["backend"] for r in timed} == BACKENDS, model
        assert all(r["median_ms"] > 0 and r["size_mb"] > 0 for r in timed)
        assert {1, 32} <= {r["batch_size"] for r in timed}
        assert {1, 2} <= {r["threads"] for r in timed}
        int8 = next(r for r in timed if r["backend"] == "ort_int8")
        fp32 = next(r for r in timed if r["backend"] == "ort_fp32")
        assert int8["size_mb"] < fp32["size_mb"], model
        mem = [r for r in records if r["model"] == model and r.get("measure") == "peak_rss"]
        assert {r["backend"] for r in mem} == BACKENDS, model
        assert all(r["peak_rss_mb"] > r["baseline_rss_mb"] > 0 for r in mem)
    report = (tmp_path / "speed.md").read_text()
    assert "## Targets" in report and "avx512_vnni" in report and "## tiny-xlmr" in report
    assert (tmp_path / "speed.png").stat().st_size > 0
    # an interrupted run is reported for the models it finished: speed_report.py --models re-renders from the records
    import speed_report

    speed_report.main(["--dir", str(tmp_path), "--models", "tiny"])
    partial = (tmp_path / "speed.md").read_text()
    assert "## tiny\n" in partial and "## tiny-xlmr" not in partial and "reported by speed_report.py for tiny only" in partial
