"""Negative rotation: which negatives each training epoch sees (the paper's three strategies).

The paper trains on every positive each epoch and handles the 1:5 imbalance by how negatives are
added: a block that rotates every few epochs ("rotate", its best), every negative ("all"), or
blocks added one at a time ("grow"). `NegativeRotation.records(epoch)` is a pure function of the
epoch and the seed, so a resumed run trains on exactly the data it would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ptxfast.data.seeded import rank

if TYPE_CHECKING:
    from ptxfast.data.datasets import Record

__all__ = ["NEGATIVE_STRATEGIES", "NegativeRotation"]

NEGATIVE_STRATEGIES = ("rotate", "all", "grow")


class NegativeRotation:
    """The training set of an epoch: all train positives plus negatives by one of the paper's
    three ways of handling the imbalance (`strategy`):

    - "rotate": a block of `n_neg` negatives that changes every `every` epochs to negatives not
      yet seen (the paper's best);
    - "all": every negative (the split's train negatives and the pool) in every epoch;
    - "grow": the first block, then every `every` epochs one more block of `n_neg` unseen
      negatives added to those already in, until every negative is in.

    `negatives` is ordered: its first `n_neg` are the block of epochs 0..every-1 (the split's own
    train negatives), the rest (the pool) follow in a seeded order. When no unseen negatives are
    left, "rotate" starts a fresh seeded permutation of all negatives (negatives of the block in
    progress count as seen in it). `records(epoch)` is a pure function of the epoch, so resuming
    at any epoch gives the same data.
    """

    def __init__(
        self,
        positives: Sequence[Record],
        negatives: Sequence[Record],
        n_neg: int | None = None,
        every: int = 4,
        seed: int = 0,
        strategy: str = "rotate",
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 epoch, got {every}")
        if strategy not in NEGATIVE_STRATEGIES:
            raise ValueError(
                f"negatives strategy {strategy!r}; choose one of {', '.join(NEGATIVE_STRATEGIES)}"
            )
        self.positives = list(positives)
        self.negatives = list(negatives)
        ids = [r.image_id for r in self.negatives]
        if len(set(ids)) != len(ids):
            raise ValueError("negatives contain the same image twice")
        n = len(self.positives) if n_neg is None else n_neg
        if n < 0:
            raise ValueError(f"n_neg must be >= 0, got {n_neg}")
        self.n_neg = min(n, len(self.negatives))
        self.every = every
        self.seed = seed
        self.strategy = strategy
        self._blocks: list[list[Record]] = [self.negatives[: self.n_neg]]
        self._state: tuple[int, list[Record]] = (
            0,
            sorted(self.negatives[self.n_neg :], key=lambda r: self._key(0, r)),
        )
        # The first pass in order: what "grow" adds a block of at a time.
        self._first_pass = self._blocks[0] + self._state[1]

    @classmethod
    def from_splits(
        cls,
        splits: dict[str, list[Record]],
        every: int = 4,
        seed: int = 0,
        strategy: str = "rotate",
    ) -> NegativeRotation:
        """Rotation over a split: train positives, train negatives first, then the pool."""
        train = splits["train"]
        initial = [r for r in train if not r.label]
        positives = [r for r in train if r.label]
        negatives = initial + list(splits["pool"])
        return cls(positives, negatives, len(initial), every, seed, strategy)

    def _key(self, cycle: int, r: Record) -> tuple[bytes, str]:
        return rank(self.seed, "rotation", cycle, r.image_id), r.image_id

    def block(self, index: int) -> list[Record]:
        """The negatives of block `index` (epochs index*every .. index*every + every - 1)."""
        if index < 0:
            raise ValueError(f"block index must be >= 0, got {index}")
        # Blocks are built in order and memoised; each depends only on the constructor arguments.
        while len(self._blocks) <= index:
            cycle, queue = self._state
            block: list[Record] = []
            while len(block) < self.n_neg:
                if not queue:
                    cycle += 1
                    in_block = {r.image_id for r in block}
                    queue = sorted(
                        (r for r in self.negatives if r.image_id not in in_block),
                        key=lambda r, c=cycle: self._key(c, r),
                    )
                take = min(self.n_neg - len(block), len(queue))
                block.extend(queue[:take])
                queue = queue[take:]
            self._state = (cycle, queue)
            self._blocks.append(block)
        return list(self._blocks[index])

    def epoch_negatives(self, epoch: int) -> list[Record]:
        """The negatives trained on in `epoch`, by the strategy."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self.strategy == "all":
            return list(self.negatives)
        if self.strategy == "grow":
            return self._first_pass[: self.n_neg * (epoch // self.every + 1)]
        return self.block(epoch // self.every)

    def records(self, epoch: int) -> list[Record]:
        """Positives then this epoch's negatives (the DataLoader shuffles)."""
        return self.positives + self.epoch_negatives(epoch)

    def __len__(self) -> int:
        """Images of the first epoch ("grow" has more later; `records` says exactly)."""
        return len(self.records(0))
