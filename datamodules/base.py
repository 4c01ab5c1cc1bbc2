"""What every DataModule shares: tokenizer loading, epoch-seeded resumable shuffling, dynamic padding.

Exact resume: the training order of epoch ``e`` is a permutation drawn from ``seed + e`` (independent of the
global RNG), and the DataModule's ``state_dict`` records how many batches of the current epoch were trained, so
that ``fit --ckpt_path`` continues mid-epoch with the very next batch. DataLoaders get their own generators, so
that creating an iterator does not consume the global RNG (dropout then draws the same numbers as in an
uninterrupted run).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any, cast

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kasa_lightning.hub import resolve_pretrained


class ResumableSampler(DistributedSampler):
    """A shuffling sampler whose order depends only on (seed, epoch) and that can skip what was already seen.

    Sharded like ``DistributedSampler`` (which it is, so Lightning does not wrap it): every process draws the same
    permutation, pads it by wrapping around to a multiple of ``num_replicas`` and takes every ``num_replicas``-th
    index from its ``rank``. With one process that is the whole permutation.
    """

    def __init__(self, data: Sized, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(cast(Dataset, data), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._skip: tuple[int, int] | None = None  # (epoch, samples of this rank)

    def skip(self, epoch: int, samples: int) -> None:
        """Leave out this rank's first ``samples`` indices when epoch ``epoch`` is iterated (once)."""
        self._skip = (epoch, samples)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(cast(Sized, self.dataset)), generator=g).tolist()
        padding = self.total_size - len(order)  # pad to equal shares, as DistributedSampler does
        order += (order * math.ceil(padding / len(order)))[:padding] if padding else []
        mine = order[self.rank : self.total_size : self.num_replicas]
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start = self._skip[1]
        self._skip = None
        return iter(mine[start:])


class BaseDataModule(L.LightningDataModule):
    """The DataModule (--data.help CLASS for a subclass's options): tokenizer, loaders, batches and resume state.

    Subclasses build ``self.train_set`` / ``self.val_set`` / ``self.test_set`` (lists or ``datasets.Dataset`` of
    tokenised rows) in ``setup`` and set ``task`` and ``num_labels`` (which the CLI links to the model).

    ``batch_size`` is the micro-batch of one process. ``global_batch_size`` (optional) is the effective batch
    (``batch_size x processes x trainer.accumulate_grad_batches``) to keep on any number of devices: ``KaSAModule``
    sets ``trainer.accumulate_grad_batches`` from it before fitting and refuses a number of processes that does not
    divide it (see ``KaSAModule.setup``). ``None``: the trainer's ``accumulate_grad_batches`` is used as given.
    """

    task: str = "classification"

    def __init__(
        self,
        tokenizer: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        max_length: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        global_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be >= 1")
        if global_batch_size is not None and (global_batch_size < 1 or global_batch_size % batch_size):
            raise ValueError(
                f"data.global_batch_size={global_batch_size} must be a positive multiple of "
                f"data.batch_size={batch_size} (the effective batch is batch_size x processes x "
                "accumulation steps)"
            )
        self.tokenizer_name = tokenizer
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_length = max_length
        self.num_workers = num_workers
        self.seed = seed
        self._tokenizer = None
        self._sampler: ResumableSampler | None = None
        self._resume: dict[str, int] | None = None
        # the tokenized splits that setup() builds (lists of examples or datasets)
        self.train_set: Any = None
        self.val_set: Any = None
        self.test_set: Any = None
        self.predict_set: Any = None

    @property
    def tokenizer(self):  # noqa: ANN201
        if self._tokenizer is None:
            if not self.tokenizer_name:
                raise ValueError(
                    "data.tokenizer is not set: give a Hub name or local path (the CLI links model.backbone)"
                )
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(self.tokenizer_name, "data.tokenizer"))
            tok = self._tokenizer
            if tok.eos_token is None and tok.sep_token is not None:  # BERT-style vocabularies used with a decoder
                tok.eos_token = tok.sep_token
            if tok.pad_token is None:  # GPT-2 / LLaMA tokenizers have none
                tok.pad_token = tok.eos_token
        return self._tokenizer

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of tokenised rows to the longest one (dynamic padding)."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer, return_tensors="pt")(rows)

    def _check(self, data: Any, split: str) -> Any:
        if data is None or len(data) == 0:
            raise ValueError(f"{type(self).__name__}: the {split} split is empty; check the data path and filters")
        return data

    def _loader(self, data: Any, split: str, train: bool) -> DataLoader:
        data = self._check(data, split)
        sampler = None
        if train:
            world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
            sampler = self._sampler = ResumableSampler(data, self.seed, num_replicas=world, rank=rank)
            if self._resume is not None:
                sampler.skip(self._resume["epoch"], self._samples_done(self._resume, sampler, world))
                self._resume = None
                _silence_not_resumable_warning()
        return DataLoader(
            data,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "validation", train=False)

    def test_dataloader(self) -> Any:
        return self._loader(self.test_set, "test", train=False)

    def predict_dataloader(self) -> Any:
        return self._loader(self.predict_set if self.predict_set is not None else self.test_set, "predict", False)

    # ------------------------------------------------------------------ exact resume
    # (the sampler's position travels in this DataModule's state; Lightning only sees a DataLoader without one)
    def state_dict(self) -> dict[str, int]:
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        # The epoch whose order the sampler is drawing (Lightning sets it at each epoch start). Not
        # trainer.current_epoch: when max_steps ends an epoch early, Lightning already counts that epoch as done.
        epoch = self._sampler.epoch if self._sampler is not None else self.trainer.current_epoch
        # a checkpoint written in on_train_batch_end has processed the batch but not yet marked it completed
        return {
            "epoch": epoch,
            "batches": cast(Any, progress).processed,  # a _BatchProgress: typed as its base tracker
            "batch_size": self.batch_size,
            "world_size": self.trainer.world_size,
        }

    def _samples_done(self, state: dict[str, int], sampler: ResumableSampler, world: int) -> int:
        """This rank's samples of the saved epoch that were trained. A resume in the middle of an epoch needs
        the batch size and number of processes it was saved with: with others, the saved batch count would skip
        the wrong samples (or batches as Lightning counts them would not match the data left)."""
        batch_size, saved_world = state.get("batch_size", self.batch_size), state.get("world_size", world)
        done = state["batches"] * batch_size
        if 0 < done < sampler.num_samples and (batch_size, saved_world) != (self.batch_size, world):
            setting, saved, now = (
                ("data.batch_size", batch_size, self.batch_size)
                if batch_size != self.batch_size
                else ("trainer.devices x trainer.num_nodes (processes)", saved_world, world)
            )
            raise ValueError(
                f"{setting}={now}, but the checkpoint stopped in the middle of epoch {state['epoch']} with "
                f"{state['batches']} batches of {batch_size} samples done on each of {saved_world} processes. "
                f"Resuming mid-epoch with another value would skip or repeat samples: resume with {setting}="
                f"{saved}, or resume from a checkpoint written at an epoch end, where the value may change."
            )
        return done

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self._resume = dict(state)


def _silence_not_resumable_warning() -> None:
    """Lightning warns on every mid-epoch resume that the DataLoader "is not resumable" because the loader has no
    ``state_dict``; here the DataModule's state restores `ResumableSampler`'s position, so the resume is exact and
    the warning untrue. Ignore that one message (it is only ever issued on a resume, and this runs only when a
    resume restored our sampler)."""
    import warnings

    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    warnings.filterwarnings(
        "ignore",
        message=r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not "
        r"resumable",
        category=PossibleUserWarning,
    )
