"""``SentimentDemoDataModule``: the quickstart's generated sentiment task (see ``synthetic.py``), offline."""

from __future__ import annotations

from kasa_lightning.datamodules.base import BaseDataModule
from kasa_lightning.datamodules.synthetic import make_sentiment_examples


class SentimentDemoDataModule(BaseDataModule):
    """Binary sentiment classification on generated sentences: ``train_size`` training and ``val_size``
    validation examples from different seeds (no overlap in the random draws)."""

    task = "classification"
    num_labels = 2

    def __init__(self, train_size: int = 1024, val_size: int = 256, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        if train_size < 1 or val_size < 1:
            raise ValueError(f"data.train_size={train_size} and data.val_size={val_size} must both be >= 1")
        self.train_size, self.val_size = train_size, val_size

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = self._tokenize(make_sentiment_examples(self.train_size, seed=self.seed))
        self.val_set = self._tokenize(make_sentiment_examples(self.val_size, seed=self.seed + 10_000))
        self.test_set = self.val_set

    def _tokenize(self, rows: list[dict]) -> list[dict]:
        enc = self.tokenizer([r["text"] for r in rows], truncation=True, max_length=self.max_length)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": r["label"]}
            for ids, mask, r in zip(enc["input_ids"], enc["attention_mask"], rows)
        ]
