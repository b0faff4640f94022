"""A tiny randomly initialised BERT with a WordPiece vocabulary made on the fly from the training texts."""

import json
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_bert(folder: Path, texts, vocab_size: int = 300, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (folder / "vocab.txt").write_text("\n".join(w for w, _ in vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=hidden * 2, max_position_embeddings=128)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    return folder


XLMR_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3 as in XLM-R: pad id 1


def make_tiny_xlmr(folder: Path, texts, vocab_size: int = 400, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny XLM-R-style classifier: SentencePiece-style Unigram vocabulary made on the fly, <s>/</s> specials,
    pad id 1, no token_type_ids, RoBERTa position ids (offset by the pad id)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def with_pipeline(tok):
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        return tok

    trained = with_pipeline(Tokenizer(models.Unigram()))
    trained.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=XLMR_SPECIAL,
                                                               unk_token="<unk>"))
    # The trainer's scores differ in their last digits from one process to the next (its hash maps' order), and so
    # do the order of its pieces (hence the ids) and which rare character gets which of the lowest scores: order the
    # pieces by name and round the scores, so that every run of the tests encodes the same ids into the same model.
    vocab = json.loads(trained.to_str())["model"]["vocab"]
    n_special = len(XLMR_SPECIAL)
    assert [p for p, _ in vocab[:n_special]] == XLMR_SPECIAL
    pieces = sorted((p, round(score, 6)) for p, score in vocab[n_special:])
    tok = with_pipeline(Tokenizer(models.Unigram([(p, 0.0) for p in XLMR_SPECIAL] + pieces,
                                                 unk_id=XLMR_SPECIAL.index("<unk>"))))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<unk>")
    assert fast.pad_token_id == 1 and fast("a")["input_ids"][0] == 0
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=4, intermediate_size=hidden * 2, max_position_embeddings=130,
                           type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    XLMRobertaForSequenceClassification(cfg).save_pretrained(folder)
    return folder


def make_tiny_distilbert(folder: Path, texts, vocab_size: int = 300, hidden: int = 32, layers: int = 2,
                         seed: int = 0) -> Path:
    """A tiny DistilBERT classifier (WordPiece; no token types; pre_classifier + classifier head)."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    folder = Path(folder)
    make_tiny_bert(folder, texts, vocab_size=vocab_size, hidden=hidden, layers=layers, seed=seed)  # the vocabulary
    for f in folder.glob("*.json"):
        f.unlink()
    DistilBertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    n_vocab = len((folder / "vocab.txt").read_text().splitlines())
    cfg = DistilBertConfig(vocab_size=n_vocab, dim=hidden, n_layers=layers, n_heads=4, hidden_dim=hidden * 2,
                           max_position_embeddings=128)
    DistilBertForSequenceClassification(cfg).save_pretrained(folder)
    return folder
