"""What a newcomer meets first: --help, a CSV saved in the wrong encoding, the export check lines, the latency
count; and the training schedule's warm-up."""

import argparse
import types

import numpy as np
import pytest

import train_eager_qat
from common import PipelineError, base_parser, load_split
from evaluation import batch1_latency_ms
from export_to_onnx import check_batches


def help_strings(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help as --help prints it (the formatter's own expansion, whitespace normalised)."""
    fmt = parser._get_formatter()
    out = {}
    for action in parser._actions:
        if action.option_strings and action.help:
            text = fmt._get_help_string(action) % {**vars(action), "prog": parser.prog}
            out[action.option_strings[-1]] = " ".join(text.split())
    return out


@pytest.mark.parametrize("training", [True, False])
def test_help_states_each_default_once(training):
    helps = help_strings(base_parser("x", training=training))
    for option, text in helps.items():
        assert text.lower().count("default:") <= 1, (option, text)
        assert "None" not in text, (option, text)
    full = " ".join(base_parser("x", training=training).format_help().split())
    assert "(default: None)" not in full and "the run's) (default" not in full
    if training:
        assert "(default: 32)" in helps["--batch-size"] and "(default: text)" in helps["--text-column"]
    else:  # settings a later step takes from the run say so, once
        for option in ("--data-dir", "--text-column", "--label-column", "--max-length"):
            assert helps[option].endswith("(default: the run's)"), (option, helps[option])


def test_non_utf8_csv_is_one_line_that_says_save_as_utf8(tmp_path):
    rows = "text,label\n" + "bagus,positive\n" * 50_000 + "kopi di kafé ini enak,positive\n"
    (tmp_path / "test.csv").write_bytes(rows.encode("cp1252"))
    with pytest.raises(PipelineError) as e:
        load_split(tmp_path, "test")
    msg = str(e.value)
    assert "\n" not in msg and "UTF-8" in msg and "save it as UTF-8" in msg
    assert "line 50002" in msg and "0xe9" in msg  # where: the line in the file, not pandas' offset in a chunk


@pytest.mark.parametrize("content, line", [
    ("text,label\nbagus,positive,extra\njelek,negative\n", 2),  # pandas: 'positive' as text, 'extra' as label
    ('text,label\n"enak\nsekali",positive\njelek,negative,x\n', 4),  # the line in the file, not the row
    ("text,label\nbagus,positive\njelek\n", 3),
])
def test_ragged_csv_row_is_refused_with_its_line(tmp_path, content, line):
    (tmp_path / "train.csv").write_text(content)
    with pytest.raises(PipelineError, match=rf"train.csv line {line} has \d fields? but the header has 2"):
        load_split(tmp_path, "train")


def test_predict_and_serve_help_state_each_default_once():
    import predict
    import serve

    for parser in (predict.build_parser(), serve.build_parser()):
        for option, text in help_strings(parser).items():
            assert text.lower().count("default:") <= 1 and "None" not in text, (option, text)
    assert help_strings(predict.build_parser())["--threads"].endswith("(default: CPU count // workers)")


def test_utf8_with_bom_still_loads(tmp_path):
    (tmp_path / "test.csv").write_bytes("text,label\nkopi di kafé ini enak,positive\n".encode("utf-8-sig"))
    split = load_split(tmp_path, "test")
    assert split.texts == ["kopi di kafé ini enak"] and split.labels == ["positive"]


def batch(n_rows, length, lengths=None):
    mask = np.zeros((n_rows, length), np.int64)
    for i, l in enumerate(lengths or [length] * n_rows):
        mask[i, :l] = 1
    return {"input_ids": np.arange(n_rows * length, dtype=np.int64).reshape(n_rows, length) % 50 + 5,
            "attention_mask": mask}


def shapes(batches):
    return [b["input_ids"].shape for b in batches]


def test_export_checks_each_distinct_shape_once():
    # two shapes: the largest and the smallest batch
    assert shapes(check_batches([batch(32, 40), batch(32, 20), batch(7, 12)])) == [(32, 40), (7, 12)]
    # one batch (or all alike): its shortest row, unpadded, stands in for a second shape
    only = batch(4, 10, lengths=[10, 6, 9, 10])
    checked = check_batches([only])
    assert shapes(checked) == [(4, 10), (1, 6)]
    assert checked[1]["attention_mask"].all()
    np.testing.assert_array_equal(checked[1]["input_ids"][0], only["input_ids"][1, :6])
    # nothing else to try: one line, not the same one twice
    assert shapes(check_batches([batch(1, 8)])) == [(1, 8)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    import torch
    from tiny_model import make_tiny_bert
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = [f"teks nomor {i} untuk uji latensi" for i in range(20)]
    folder = make_tiny_bert(tmp_path_factory.mktemp("tiny"), texts, vocab_size=60)
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()

    def predict(batch):
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return texts, AutoTokenizer.from_pretrained(folder), predict


@pytest.mark.parametrize("n, expected", [(100, 20), (20, 20), (5, 5), (0, None)])
def test_latency_times_n_texts_after_a_separate_warm_up(tiny_bert, n, expected):
    texts, tokenizer, predict = tiny_bert
    calls = []

    def counting(batch):
        calls.append(batch["input_ids"].shape)
        return predict(batch)

    lat = batch1_latency_ms(counting, texts, tokenizer, ["input_ids", "attention_mask"], 32, n)
    if expected is None:
        assert lat == {} and calls == []
    else:
        assert lat["n"] == expected and len(calls) == expected + 1  # + the untimed warm-up
        assert 0 < lat["p50"] <= lat["p95"]


def training_args_as_the_script_builds_them(monkeypatch, tmp_path, *argv):
    args = train_eager_qat.parse_args(list(argv))
    return train_eager_qat.training_arguments(args, train_eager_qat.phases_of(args, 2000)[0], tmp_path / "ckpt")


def test_scheduler_warms_up_over_the_given_ratio(monkeypatch, tmp_path):
    """--warmup-ratio (default 0.1) is a ratio of the training steps: on transformers 4.x, warmup_steps=0.1 meant
    zero warm-up steps."""
    args = training_args_as_the_script_builds_them(monkeypatch, tmp_path)
    assert args.get_warmup_steps(200) == 20
    args = training_args_as_the_script_builds_them(monkeypatch, tmp_path, "--warmup-ratio", "0.25")
    assert args.get_warmup_steps(200) == 50
    # and the scheduler the Trainer makes from it really ramps up over those steps
    import torch
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(200),
                          num_training_steps=200)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and lrs[25] == pytest.approx(0.5) and max(lrs) == pytest.approx(1.0) and lrs[50] == 1.0


@pytest.mark.parametrize("ratio", ["1", "1.5", "-0.1"])
def test_warmup_ratio_outside_0_1_is_refused(monkeypatch, tmp_path, ratio):
    with pytest.raises(PipelineError, match="warmup-ratio"):
        training_args_as_the_script_builds_them(monkeypatch, tmp_path, "--warmup-ratio", ratio)


def padded_tokens_per_epoch(trainer) -> int:
    """Tokens the collator produces over one epoch of the Trainer's own training dataloader (padding included)."""
    return sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader())


@pytest.mark.parametrize("argv, sampler", [([], "RandomSampler"), (["--group-by-length"], "LengthGroupedSampler")])
def test_group_by_length_batches_similar_lengths(monkeypatch, tmp_path, argv, sampler):
    """--group-by-length makes the Trainer sample batches of similar length: on texts of very different lengths
    an epoch pads far fewer tokens than random batches, and still sees every row once."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from tiny_model import make_tiny_bert

    rng = np.random.RandomState(0)
    texts = [" ".join(["bagus"] * n) for n in rng.randint(1, 60, size=256)]
    model_dir = make_tiny_bert(tmp_path / "tiny", texts)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    split = types.SimpleNamespace(texts=texts, labels=["a", "b"] * 128)
    ds = train_eager_qat.EncodedDataset(split, tokenizer, ["input_ids", "attention_mask"], {"a": 0, "b": 1}, 64)
    args = training_args_as_the_script_builds_them(monkeypatch, tmp_path, "--batch-size", "16", *argv)
    trainer = Trainer(model=model, args=args, train_dataset=ds, eval_dataset=ds,
                      data_collator=DataCollatorWithPadding(tokenizer))
    assert type(trainer._get_train_sampler()).__name__ == sampler
    real_tokens = sum(len(r["input_ids"]) for r in ds.rows)
    rows = sum(len(b["labels"]) for b in trainer.get_train_dataloader())
    padding = padded_tokens_per_epoch(trainer) / real_tokens
    assert rows == len(texts)
    if argv:
        assert padding < 1.3
    else:
        assert padding > 1.5
