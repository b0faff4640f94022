"""The model card of a run: models/<run>/README.md, written from the run's own files, and the training-curve picture
results/<run>/training_curve.png beside the confusion matrices.

Every evaluation step rewrites both after writing its metrics (evaluation.evaluate), so the card always shows the
metrics of the run's current models; metrics measured on a model made from other weights (before a retrain or a
re-export) are left out and named. Run it alone to rewrite the card of a run:

    python model_card.py --run-name NAME
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from common import (INT8_FILE, LINEAGE_FILE, ONNX_FILE, ROOT, STATE_DICT_FILE, atomic_output,
                    file_size_mb, read_lineage, sha256_file)
from run import Run

CARD_FILE = "README.md"
CURVE_FILE = "training_curve.png"
# The stages of the evaluations, in the order the card lists them, with what each measures.
STAGES = {
    "eager_fp32": "PyTorch FP32 (no quantization)",
    "eager_qat": "PyTorch, fake INT8 (the simulation), batches",
    "eager_qat_per_text": "PyTorch, fake INT8, one text per batch",
    "onnx_qat": "ONNX FP32, batches",
    "onnx_int8_dynamic": "ONNX INT8, batches",
    "onnx_int8_dynamic_per_text": "ONNX INT8, one text per batch (as served)",
}


def shown_path(path) -> str:
    """A path as the card shows it: inside an installed package as site-packages/..., relative to the repository when
    beside it, under ~ when in the home folder."""
    import sysconfig

    p = Path(str(path)).expanduser()
    if not p.is_absolute():
        return str(path)
    for base, prefix in ((Path(sysconfig.get_paths()["purelib"]), "site-packages"), (ROOT.parent, None),
                         (Path.home(), "~")):
        try:
            rel = p.resolve().relative_to(base.resolve())
        except ValueError:
            continue
        return f"{prefix}/{rel}" if prefix else os.path.relpath(p.resolve(), ROOT)
    return str(p)


def cpu_text(cpu: dict | None) -> str:
    if not cpu:
        return "not recorded"
    flags = cpu.get("flags", {})
    vnni = flags.get("avx512_vnni") or flags.get("avx_vnni") or flags.get("amx_int8")
    isa = "VNNI" if vnni else ("AVX-512, no VNNI" if flags.get("avx512f") else ("AVX2" if flags.get("avx2") else "-"))
    return f"{cpu.get('model', '?')} ({isa})"


def licence_of(source: str) -> str:
    """The base model's licence as its folder records it (the default model's PROVENANCE.json, or a model card's
    `license:` line), else where to look."""
    folder = Path(str(source)).expanduser()
    prov = folder / "PROVENANCE.json"
    if prov.is_file():
        p = json.loads(prov.read_text())
        return f"{p.get('licence', 'not recorded')} ({p.get('upstream_model', '')}; converted from {p.get('source_package', '?')})"
    readme = folder / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines()[:40]:
            if line.lower().startswith("license:"):
                return line.split(":", 1)[1].strip()
    return "not recorded in the model's folder: see the base model's own card"


def current_metrics(rdir: Path, rres: Path) -> tuple[dict, dict]:
    """{stage: (metrics, path)} of the metrics measured on the run's current files, and {stage: why left out}."""
    current, left_out = {}, {}
    for path in sorted(rres.glob("metrics_*.json")):
        m = json.loads(path.read_text())
        stage = m.get("stage", path.stem[len("metrics_"):])
        lineage = m.get("lineage")
        if not isinstance(lineage, dict):
            left_out[stage] = "no lineage record"
            continue
        changed = [f for f, sha in lineage.items() if (rdir / f).is_file() and sha256_file(rdir / f) != sha]
        if changed:
            left_out[stage] = f"measured on another {', '.join(sorted(changed))}: re-run its evaluation"
            continue
        current[stage] = (m, path)
    return current, left_out


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def plot_training_curve(info: dict, path: Path) -> bool:
    """Training loss and validation loss / macro-F1 per epoch, the phases one after another; False when the run
    recorded no curve (trained before curves were recorded)."""
    phases = [(name, ph) for name, ph in (info.get("phases") or {}).items() if isinstance(ph, dict) and ph.get("curve")]
    if not phases:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 3.8))
    offset = 0.0
    for i, (name, ph) in enumerate(phases):
        c = ph["curve"]
        color = f"C{i}"
        for key, ax, style, label in (("loss", ax_loss, "-", "training loss"), ("val_loss", ax_loss, "o--", "validation loss"),
                                      ("val_f1_macro", ax_f1, "o-", "validation macro-F1")):
            pts = c.get(key) or []
            if pts:
                ax.plot([offset + e for e, _ in pts], [v for _, v in pts], style, color=color, label=f"{name}: {label}")
        end = max((e for key in ("loss", "val_loss", "val_f1_macro") for e, _ in c.get(key) or []), default=0.0)
        offset += end
        if i < len(phases) - 1:
            for ax in (ax_loss, ax_f1):
                ax.axvline(offset, color="grey", lw=0.8, ls=":")
    ax_loss.set_xlabel("epoch (phases one after another)")
    ax_loss.set_ylabel("loss")
    ax_f1.set_xlabel("epoch (phases one after another)")
    ax_f1.set_ylabel("validation macro-F1")
    for ax in (ax_loss, ax_f1):
        ax.legend(fontsize=7)
    fig.suptitle(f"{info.get('run', '')} training ({info.get('recipe', 'recipe not recorded')})", fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def card_text(run: Run, rres: Path, has_curve: bool) -> str:
    """The card of the run as trained (run.info: an evaluation's --max-length or --data-dir does not change it)."""
    rdir, info, quant = run.dir, run.info, run.quant
    lineage = read_lineage(rdir)
    metrics, left_out = current_metrics(rdir, rres)
    max_length = info.get("max_length", 128)
    rel_res = os.path.relpath(rres, rdir)
    today = datetime.date.today().isoformat()
    L = [f"# {run.name}", "",
         f"Model card written by `model_card.py` from the run's files on {today} (every evaluation step rewrites it). "
         f"Labels: {', '.join(f'`{l}`' for l in info.get('labels', []))}.", "",
         "## Model", "",
         f"- Base model: `{info.get('model')}` ({shown_path(info.get('model_source', '?'))})",
         f"- Licence: {licence_of(info.get('model_source', ''))}",
         f"- Data: `{shown_path(info.get('data_dir', '?'))}` (columns `{info.get('text_column')}`, "
         f"`{info.get('label_column')}`), {info.get('n_train', '?')} training rows, max length {max_length} tokens",
         "", "## Recipe", "",
         f"`{info.get('recipe', 'not recorded')}`, seed {info.get('seed')}, batch {info.get('batch_size')}, loss weights "
         f"`{info.get('class_weight')}`"
         + (f", started from run `{info['init_from']}`" if info.get("init_from") else "") + ".", ""]
    phases = info.get("phases") or {}
    if phases:
        L += ["| phase | epochs | lr | distillation (weight, T) | validation macro-F1 | kept | wall time |",
              "|---|---|---|---|---|---|---|"]
        for name, ph in phases.items():
            start = f" (start {pct(ph['start_val_f1_macro'])})" if ph.get("start_val_f1_macro") is not None else ""
            dist = f"{ph.get('distill_weight', 0):g}, {ph.get('distill_temperature', 1):g}" if ph.get("distill_weight") else "–"
            L.append(f"| {name} | {ph.get('epochs', 0):g} | {ph.get('lr', 0):g} | {dist} | {pct(ph.get('val_f1_macro'))}"
                     f"{start} | {ph.get('kept', '–')} | {ph.get('wall_s', 0) / 60:.1f} min |")
    else:
        L.append(f"{info.get('epochs')} epoch(s) at lr {info.get('lr')}; validation macro-F1 {pct(info.get('val_f1_macro'))}.")
    chosen = quant.get("chosen_for", {})
    L += ["", "## Quantization", "",
          f"Dynamic INT8 (`onnxruntime.quantization.quantize_dynamic`): target CPU `{quant.get('target_cpu') or 'not recorded'}`, "
          f"weights {quant.get('weight_type')}{' (7-bit, reduce_range)' if quant.get('reduce_range') else ''}, "
          f"{'per channel' if quant.get('per_channel') else 'per tensor'}, optimize_graph {quant.get('optimize_graph')}; "
          f"chosen on {chosen.get('cpu', '?')}: {chosen.get('rule', '')}."]
    gate = (lineage.get(INT8_FILE) or {}).get("fidelity")
    if isinstance(gate, dict) and gate.get("gated"):
        sim = gate.get("vs_simulation", {})
        L.append(f"Fidelity gate at quantization: INT8 and the simulation agree on {pct(sim.get('agreement'))}% of "
                 f"{gate.get('rows')} validation rows; mean |logit difference| {gate.get('rel_logit_diff', 0):.3f}x the "
                 f"simulated quantization effect.")
    elif isinstance(gate, dict):
        L.append(f"Fidelity gate: {gate.get('skipped', 'not gated (a --no-qat run)')}.")
    L += ["", "## Test metrics", ""]
    if metrics:
        n = next(iter(metrics.values()))[0].get("n_samples")
        data = next(iter(metrics.values()))[0].get("data", "")
        L += [f"{n} rows of `{shown_path(data)}`; date = when the metrics file was written.", "",
              "| stage | accuracy | macro-F1 | texts/s | size | CPU, threads | date |", "|---|---|---|---|---|---|---|"]
        for stage in sorted(metrics, key=lambda s: list(STAGES).index(s) if s in STAGES else len(STAGES)):
            m, path = metrics[stage]
            date = datetime.date.fromtimestamp(path.stat().st_mtime).isoformat()
            L.append(f"| {STAGES.get(stage, stage)} (`{stage}`) | {pct(m['accuracy'])} | {pct(m['f1_macro'])} | "
                     f"{m.get('samples_per_second', 0):.1f} | {m.get('model_size_mb', 0):.1f} MB | "
                     f"{cpu_text(m.get('cpu'))}, {m.get('threads')} | {date} |")
        pairs = [(s, o, a) for s, (m, _) in metrics.items() if s.startswith("onnx_int8") for o, a in m.get("agreement", {}).items()
                 if o in metrics]
        if pairs:
            L += ["", "Agreement of the INT8 model's labels with the other stages (same test rows):", "",
                  "| INT8 stage | compared with | agreement | rows differ | max abs logit difference |", "|---|---|---|---|---|"]
            for s, o, a in sorted(pairs):
                L.append(f"| `{s}` | `{o}` | {pct(a['agreement'])}% | {a['n_disagree']} | "
                         f"{a['max_abs_logit_diff']:.3f} |" if "max_abs_logit_diff" in a else
                         f"| `{s}` | `{o}` | {pct(a['agreement'])}% | {a['n_disagree']} | – |")
    else:
        L.append("None yet: run the evaluations (`bash run_pipeline.sh` runs them all).")
    for stage, why in sorted(left_out.items()):
        L.append(f"\nLeft out: `{stage}` ({why}).")
    pictures = ([f"![training curve]({rel_res}/{CURVE_FILE})"] if has_curve else []) + [
        f"![{m[0]['stage']}]({rel_res}/confusion_matrix_{s}.png)" for s, m in metrics.items()
        if (rres / f"confusion_matrix_{s}.png").is_file()]
    if pictures:
        L += ["", "## Pictures", "", f"In `{shown_path(rres)}`: the training curve (loss and validation macro-F1 per "
              "epoch) and the confusion matrix of each stage.", "", *pictures]
    L += ["", "## Sizes and lineage", "", "| file | size | sha256 | made from |", "|---|---|---|---|"]
    for name in (STATE_DICT_FILE, ONNX_FILE, INT8_FILE):
        if (rdir / name).is_file():
            made = ", ".join(f"`{f}` {sha[:12]}" for f, sha in (lineage.get(name) or {}).get("made_from", {}).items())
            L.append(f"| `{name}` | {file_size_mb(rdir / name):.1f} MB | `{sha256_file(rdir / name)}` | {made or '–'} |")
    L += ["", f"`{LINEAGE_FILE}` holds the full record; `Predictor` and `serve.py` refuse a model whose inputs changed.",
          "", "## Use it", "",
          "From the repository root ([README_DEPLOYMENT.md](../../README_DEPLOYMENT.md) has the details):", "",
          "```python", "import json, numpy as np, onnxruntime as ort", "from transformers import AutoTokenizer", "",
          f'run = "models/{run.name}"',
          "tokenizer = AutoTokenizer.from_pretrained(run)",
          'info = json.load(open(f"{run}/run_info.json"))',
          f'session = ort.InferenceSession(f"{{run}}/{INT8_FILE}", providers=["CPUExecutionProvider"])',
          'enc = tokenizer(["makanannya enak sekali"], truncation=True, max_length=info["max_length"], return_tensors="np")',
          'logits = session.run(None, {k: enc[k].astype(np.int64) for k in info["input_names"]})[0]',
          'print(info["labels"][int(logits.argmax())])', "",
          "from predictor import Predictor",
          f'print(Predictor("models/{run.name}", per_text=True).predict(["makanannya enak sekali"]))', "```", "",
          "```bash",
          f"python serve.py --run-name {run.name}",
          f"python predict.py --run-name {run.name} --input texts.csv --output scored.csv",
          "```", ""]
    return "\n".join(L)


def write_model_card(run: Run, rres: Path) -> Path:
    """Write models/<run>/README.md and rres/training_curve.png from the run as loaded; returns the card."""
    rres = Path(rres)
    has_curve = plot_training_curve({**run.info, "run": run.name}, rres / CURVE_FILE)
    card = run.dir / CARD_FILE
    with atomic_output(card) as tmp:
        tmp.write_text(card_text(run, rres, has_curve))
    return card


def main():
    from common import base_parser
    from run import load_run

    run = load_run(base_parser(__doc__).parse_args())
    print(f"wrote {write_model_card(run, run.results_dir)}")


if __name__ == "__main__":
    from common import main_guard

    main_guard(main)
