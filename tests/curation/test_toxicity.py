"""Toxicity backends: the embedded profanity model scores for real; detoxify loads a checkpoint offline or
stops with one line, and never falls back to another backend silently."""

import dataclasses

import numpy as np
import pytest
import torch

from slmforge.curation.toxicity import load_scorer
from slmforge.errors import UserError

INSULT = "You are a fucking idiot and a worthless piece of shit"
STATS = "The two-sided test at alpha 0.05 needs about 30,400 users per arm to detect the lift."
CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


def test_profanity_scores_an_insult_high_and_statistics_low(params, scorer):
    assert params.toxicity.backend == "profanity"
    scores = scorer([INSULT, STATS, "Is a p-value of 0.049 really different from 0.051?"])
    assert scores.shape == (3,) and scores.dtype == float
    assert scores[0] >= params.toxicity.threshold
    assert scores[1] < 0.2 and scores[2] < 0.2
    assert scorer([]).shape == (0,)


def test_unknown_backend_is_a_user_error(params):
    with pytest.raises(UserError, match=r"clean\.toxicity\.backend.*'perspective'") as err:
        load_scorer(dataclasses.replace(params.toxicity, backend="perspective"))
    assert "\n" not in str(err.value)


def test_detoxify_without_its_checkpoint_is_a_one_line_error(params, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch hub cache
    detox = dataclasses.replace(params.toxicity, backend="detoxify", detoxify_checkpoint=None)
    with pytest.raises(UserError) as err:
        load_scorer(detox)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "torch") in msg  # where it looked
    assert "detoxify_checkpoint" in msg and "backend=profanity" in msg  # what to do


def test_detoxify_with_a_missing_checkpoint_file_is_a_one_line_error(params, tmp_path):
    detox = dataclasses.replace(params.toxicity, backend="detoxify", detoxify_checkpoint=str(tmp_path / "no.ckpt"))
    with pytest.raises(UserError, match=r"clean\.toxicity\.detoxify_checkpoint: .*no\.ckpt not found") as err:
        load_scorer(detox)
    assert "\n" not in str(err.value)


def test_detoxify_unknown_model_type_is_a_user_error(params, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="detoxify_model"):
        load_scorer(dataclasses.replace(params.toxicity, backend="detoxify", detoxify_model="huge"))


@pytest.fixture(scope="module")
def tiny_detoxify(tmp_path_factory):
    """A random 1-layer BERT saved as a local HF folder, and a checkpoint in detoxify's format naming it."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = "you are a an idiot the sample size test of for to and p value is".split()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(CLASSES),
                        initializer_range=1.0)  # wide weights: texts get visibly different scores
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # a bias per head, so the head read and the weights loaded can be told apart
        model.classifier.bias.copy_(torch.tensor([-1.0, 3.0, 2.0, 1.0, 0.5, -3.0]))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    checkpoint = folder / "tiny.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": str(folder), "model_name": "BertForSequenceClassification",
                                              "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
                           "dataset": {"args": {"classes": CLASSES}}},
                "state_dict": model.state_dict()}, checkpoint)
    return folder, checkpoint, model, tokenizer


def test_detoxify_loads_a_local_checkpoint_offline(params, tiny_detoxify, tmp_path, monkeypatch):
    folder, checkpoint, model, tokenizer = tiny_detoxify
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing from torch hub's cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    detox = dataclasses.replace(params.toxicity, backend="detoxify", detoxify_checkpoint=str(checkpoint),
                                detoxify_hf_config=str(folder), batch_size=2)
    score = load_scorer(detox)
    texts = ["you are an idiot", STATS, "the p value", "a test of the sample size", "and"]
    scores = score(texts)  # 5 texts in batches of 2: the last batch has one text
    assert isinstance(scores, np.ndarray) and scores.shape == (5,) and scores.dtype == float
    assert ((scores >= 0) & (scores <= 1)).all()
    # The scores are the checkpoint's "toxic" head, with its weights, not a freshly initialised model.
    with torch.no_grad():
        want = torch.sigmoid(model(**tokenizer(texts, return_tensors="pt", padding=True)).logits)[:, 0].numpy()
    np.testing.assert_allclose(scores, want, atol=1e-5)
    assert scores.std() > 0.01  # the text matters
    assert abs(scores.mean() - 0.5) > 0.05  # not an untrained head
    assert score(["one text"]).shape == (1,)


def test_detoxify_checkpoint_naming_an_uncached_hub_model_is_a_one_line_error(params, tiny_detoxify, tmp_path):
    _, _, model, _ = tiny_detoxify
    checkpoint = tmp_path / "hub.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": "no-such-org/no-such-bert", "num_classes": 6,
                                              "model_name": "BertForSequenceClassification",
                                              "tokenizer_name": "BertTokenizer"}},
                           "dataset": {"args": {"classes": CLASSES}}},
                "state_dict": model.state_dict()}, checkpoint)
    detox = dataclasses.replace(params.toxicity, backend="detoxify", detoxify_checkpoint=str(checkpoint),
                                detoxify_hf_config=None)
    with pytest.raises(UserError, match="detoxify_hf_config") as err:
        load_scorer(detox)
    assert "\n" not in str(err.value)
