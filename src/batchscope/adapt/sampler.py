"""A batch sampler whose batch size may change between optimizer steps.

``DataLoader`` refuses a new ``batch_size`` or ``batch_sampler`` after construction, but a batch
sampler's own attributes may change (AdaptDL does the same), so the size lives here::

    sampler = AdaptiveBatchSampler(len(dataset), batch_size=32, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2)
    for epoch in range(epochs):
        for x, y in loader:
            ...
            sampler.set_batch_size(64)      # takes effect at a later batch, see below

**Every example once per epoch.** An epoch is one seeded permutation of the data set (seed + epoch,
as ``DistributedSampler``); batches are consecutive slices of it, so however the size changes no
example repeats within an epoch. With ``drop_last=True`` (the default, as the noise estimators want
batches of the size asked for) the tail shorter than the current batch is left out of that epoch;
with ``drop_last=False`` it comes as a last, smaller batch.

**When a change takes effect.** The sampler hands out index batches when they are *drawn*, and a
``DataLoader`` draws ahead of the loop: with ``num_workers=w > 0`` it draws ``prefetch_factor x w``
batches at the start of each epoch and one more for every batch the loop receives. A change made
while the loop holds batch ``k`` of an epoch (counting from 0) therefore reaches batch
``k + 1 + prefetch_factor x w`` (batch ``k + 1`` with ``num_workers=0``), within the same epoch.
Batches already drawn keep their old size; training code must use the size of the batch it got,
not the sampler's current size.

**Data parallel.** ``batch_size`` is the *global* batch. With ``rank``/``world_size`` every rank
builds the same permutation and takes the strided share ``batch[rank::world_size]`` of each global
batch, the split ``DistributedSampler`` makes of the whole epoch; the global batch must be a
multiple of ``world_size``.

**Resume.** ``state_dict(received=n)`` records the epoch, the position of the next example and the
sizes of batches drawn but not yet received by the loop (``received`` is how many batches of the
current epoch the loop has received; leave it out when nothing is prefetched). A sampler given that
state yields exactly the batches the uninterrupted run would have received next.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Iterator, Optional, Union

import torch
from torch.utils.data import Sampler

from ..errors import ConfigError, check_positive_int


class AdaptiveBatchSampler(Sampler[list[int]]):
    """Seeded batches of a changeable global size; see the module docstring for the guarantees.

    data: the data set (anything with ``len``) or its number of examples.
    batch_size: the global batch (summed over ranks); change it with :meth:`set_batch_size`.
    seed: the permutation of epoch ``e`` comes from ``torch.Generator().manual_seed(seed + e)``.
    """

    def __init__(self, data: Union[Sized, int], batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True):
        self.n = data if isinstance(data, int) else len(data)
        check_positive_int("data size", self.n)
        self.world_size = check_positive_int("world_size", world_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"The 'rank' parameter must be in [0, {world_size}). Got {rank!r} instead.")
        self.rank = rank
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.batch_size = self._check_size(batch_size)
        self.epoch = 0
        self._start = 0              # position in the epoch's permutation of the next batch drawn
        self._drawn: list[int] = []  # global sizes of this epoch's batches drawn so far
        self._base = 0               # position at which _drawn starts (a resumed epoch starts mid-way)
        self._replay: list[int] = []  # sizes to use before batch_size (prefetched when state was taken)

    def _check_size(self, b: int) -> int:
        check_positive_int("batch_size", b)
        if b % self.world_size:
            raise ConfigError(f"batch size {b} is not a multiple of world_size {self.world_size}; every rank "
                              f"needs the same share (use {max(self.world_size, b - b % self.world_size)})")
        if b > self.n:
            raise ConfigError(f"batch size {b} is larger than the data set ({self.n} examples); use at most {self.n}")
        return b

    def draw(self) -> list[int]:
        """The next batch for a loop that draws one at a time (no DataLoader): the epoch's iterator is
        kept here and a new epoch starts when it ends."""
        it = self.__dict__.get("_draws")
        try:
            return next(it) if it is not None else self._fresh_draw()
        except StopIteration:
            return self._fresh_draw()

    def _fresh_draw(self) -> list[int]:
        self._draws = iter(self)
        return next(self._draws)

    def __getstate__(self) -> dict:
        # A copy (a fork of a run) keeps the position, not the iterator (a generator cannot be copied):
        # a new iterator of the copy continues at the same example.
        return {k: v for k, v in self.__dict__.items() if k != "_draws"}

    def set_batch_size(self, b: int) -> None:
        """The global size of the batches drawn from now on (prefetched batches keep theirs)."""
        self.batch_size = self._check_size(b)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next ``iter`` (for loops that number epochs)."""
        self.epoch, self._start, self._drawn, self._base, self._replay = int(epoch), 0, [], 0, []

    def permutation(self, epoch: Optional[int] = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        return torch.randperm(self.n, generator=g)

    def _epoch_done(self) -> bool:
        size = self._replay[0] if self._replay else self.batch_size
        rest = self.n - self._start
        return rest <= 0 or (self.drop_last and rest < size)

    def __iter__(self) -> Iterator[list[int]]:
        # An epoch that was drawn to its end when the state was taken (or the last iteration ended)
        # is over: continue with the next one.
        if self._drawn or self._start:
            if self._epoch_done():
                self.set_epoch(self.epoch + 1)
        perm = self.permutation()
        while not self._epoch_done():
            size = self._replay.pop(0) if self._replay else self.batch_size
            size = min(size, self.n - self._start)
            batch = perm[self._start:self._start + size]
            self._start += size
            self._drawn.append(size)
            yield self._share(batch, perm).tolist()

    def _share(self, batch: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        short = -len(batch) % self.world_size
        if short:  # only a last batch with drop_last=False: pad from the epoch's start, as DistributedSampler
            batch = torch.cat([batch, perm[:short]])
        return batch[self.rank::self.world_size]

    def __len__(self) -> int:
        """Batches left in the current epoch at the current size (exact only while the size holds)."""
        start = 0 if self._epoch_done() else self._start
        rest = self.n - start
        return rest // self.batch_size if self.drop_last else -(-rest // self.batch_size)

    def state_dict(self, received: Optional[int] = None) -> dict:
        """What a resumed run needs; ``received``: batches of this epoch the loop has received."""
        k = len(self._drawn) if received is None else int(received)
        if not 0 <= k <= len(self._drawn):
            raise ConfigError(f"received={received!r}, but {len(self._drawn)} batches of this epoch were drawn; "
                              "pass how many batches of the current epoch the loop has received")
        return {"epoch": self.epoch, "position": self._base + sum(self._drawn[:k]),
                "pending": self._drawn[k:] + self._replay, "batch_size": self.batch_size, "seed": self.seed,
                "n": self.n, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n or state["seed"] != self.seed or state["world_size"] != self.world_size:
            raise ConfigError(f"the sampler state is for {state['n']} examples, seed {state['seed']}, world size "
                              f"{state['world_size']}; this sampler has {self.n}, {self.seed}, {self.world_size}")
        self.__dict__.pop("_draws", None)    # draw() starts from the loaded position
        self.epoch = int(state["epoch"])
        self._start = self._base = int(state["position"])
        self._drawn = []
        self._replay = [int(b) for b in state["pending"]]
        self.batch_size = self._check_size(int(state["batch_size"]))
