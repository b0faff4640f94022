"""A trained run, read once: its folder, data settings, labels, tokenization and quantization settings.

Every step after training gets a Run (load_run(args)) instead of re-reading run_info.json and filling its own
arguments from it; the settings a user gives on the command line override the run's in the Run, never in the
parsed arguments. Predictor, serve.py, predict.py and the Spark workers load the same object (Run.load(folder)).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from common import (MODELS_DIR, PRODUCERS, QUANT_CONFIG_FILE, RESULTS_DIR, RUN_INFO_FILE, PipelineError,
                    load_run_labels, require_file, run_dir, sha256_file)


@dataclass(frozen=True)
class Run:
    dir: Path
    results_dir: Path
    labels: tuple[str, ...]
    input_names: tuple[str, ...]
    max_length: int  # tokens per text: the run's, unless the caller overrides it
    data_dir: str  # where train/val/test.csv are: the run's, unless overridden (an evaluation on other data)
    text_column: str
    label_column: str
    quant: dict = field(repr=False)  # quant_config.json
    info: dict = field(repr=False)  # run_info.json, as training wrote it
    quant_sha256: str = field(default="", repr=False)  # of the quant_config.json bytes that quant was parsed from

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def own_data(self) -> bool:
        """Whether evaluations measure the run as trained: its own data folder, columns and max_length (other
        settings' metrics go beside the run's, not over them)."""
        return (Path(self.data_dir).resolve() == Path(self.info["data_dir"]).resolve()
                and (self.text_column, self.label_column, self.max_length)
                == (self.info["text_column"], self.info["label_column"], int(self.info["max_length"])))

    def file(self, name: str) -> Path:
        """A file of the run that must exist; a missing one names the step that writes it."""
        return require_file(self.dir / name, PRODUCERS.get(name, "train_eager_qat.py"))

    def check_quant_is(self, sha256: str) -> None:
        """Refuse when the quant_config.json a model was made from (sha256, from its lineage) is not the one this Run
        read: the file was replaced after the Run was loaded (e.g. the run re-quantized for another target)."""
        if not self.quant_sha256:
            raise PipelineError("this Run was not read by Run.load (no hash of its quant_config.json): use Run.load")
        if sha256 != self.quant_sha256:
            raise PipelineError(f"{self.dir / QUANT_CONFIG_FILE} changed since this run was read (re-trained or "
                                f"re-quantized meanwhile): load the run again")

    def quant_config(self):
        """quant_config.json as quant_sim's QuantConfig (imports torch: for the steps that simulate or quantize);
        settings this code cannot read are refused with one line."""
        from quant_sim import QuantConfig

        try:
            return QuantConfig(**self.quant)
        except (TypeError, ValueError) as e:
            raise PipelineError(f"{self.dir / QUANT_CONFIG_FILE} holds settings this code cannot read ({e}): re-run "
                                f"train_eager_qat.py for this run")

    def test_file_sha256(self) -> str:
        return sha256_file(require_file(Path(self.data_dir) / "test.csv", "prepare_data.py"))

    @classmethod
    def load(cls, folder, results_dir: Path | None = None, **overrides) -> "Run":
        """The run in folder; overrides (max_length, data_dir, text_column, label_column) that are not None replace
        the run's settings."""
        folder = Path(folder)
        if not folder.is_dir():
            raise PipelineError(f"run folder {folder} not found: run the pipeline (train_eager_qat.py ...) first")
        info_path = require_file(folder / RUN_INFO_FILE, "train_eager_qat.py")
        try:
            info = json.loads(info_path.read_text())
            quant_bytes = require_file(folder / QUANT_CONFIG_FILE, "train_eager_qat.py").read_bytes()
            quant = json.loads(quant_bytes)
        except ValueError as e:
            raise PipelineError(f"{folder}: run_info.json or quant_config.json is corrupt ({e}): re-run "
                                f"train_eager_qat.py for this run")
        labels = load_run_labels(folder)
        if info.get("labels") and list(info["labels"]) != labels:
            raise PipelineError(f"{folder}: config.json labels {labels} differ from run_info.json labels "
                                f"{info['labels']}: re-run train_eager_qat.py for this run")
        run = cls(dir=folder, results_dir=Path(results_dir) if results_dir else RESULTS_DIR / folder.name,
                  labels=tuple(labels), input_names=tuple(info["input_names"]), max_length=int(info["max_length"]),
                  data_dir=str(info["data_dir"]), text_column=info["text_column"], label_column=info["label_column"],
                  quant=quant, info=info, quant_sha256=hashlib.sha256(quant_bytes).hexdigest())
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("max_length") is not None and given["max_length"] < 1:
            raise PipelineError(f"--max-length {given['max_length']}: use at least 1 token")
        return replace(run, **given)


def load_run(args, step_before: str = "train_eager_qat.py") -> Run:
    """The run a step's arguments name (--run-name, or --model and --data-dir as training named it), with the
    settings given on the command line overriding the run's; args are left as parsed."""
    folder = run_dir(args)
    if not folder.is_dir():
        raise PipelineError(f"no run {folder.name!r} in {MODELS_DIR}: run `python {step_before}` first "
                            f"(or pass the --run-name/--model/--data-dir used there)")
    run = Run.load(folder, RESULTS_DIR / folder.name, **{k: getattr(args, k, None) for k in (
        "max_length", "data_dir", "text_column", "label_column")})
    if not run.own_data:  # metrics of other data or settings never replace those of the run as trained
        tag = f"{Path(run.data_dir).resolve().name}-{run.test_file_sha256()[:8]}-len{run.max_length}"
        other = RESULTS_DIR / folder.name / f"on-{tag}"
        print(f"--data-dir/--max-length/columns differ from the run's: results go to {other}")
        run = replace(run, results_dir=other)
    return run
