"""DataLoaders for the shared loop: seeded, position-resumable batches, sharded over processes.

Map-style data: every epoch is a permutation drawn from (seed, epoch). The permutation is cut into chunks of the
per-device batch; chunk c goes to process c % num_processes, and each chunk carries a seed derived from
(seed, epoch, c) that its augmentation draws from. So a step's examples and augmentations depend only on the global
batch and the per-device batch, not on how many processes share them, and a run resumed at step s starts at chunk
s * processes * accumulation of the same permutation with the same seeds: nothing replays, nothing is skipped.

Streaming data (`datasets.IterableDataset`): shuffled with a buffer per epoch, split between processes by
`split_dataset_by_node`, and its position saved through the stream's own `state_dict()` (NOTE: the contents of the
shuffle buffer are not part of that state, so a resumed stream continues from the right place in the source but its
next few batches differ from an uninterrupted run's).
"""

import hashlib

import torch
from datasets import IterableDataset as StreamingDataset
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, Dataset, IterableDataset


def derive_seed(*parts) -> int:
    """A 62-bit seed from any tuple of ints/strings, stable across processes, machines and Python runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


class KeyedBatch(list):
    """A list of row indices that also carries the seed of its batch (what the batch sampler yields)."""

    def __init__(self, indices, seed: int):
        super().__init__(indices)
        self.seed = seed

    def __reduce__(self):  # pickled into DataLoader workers
        return (KeyedBatch, (list(self), self.seed))


class ExampleBatch(list):
    """A list of examples that carries its batch's seed into the collator."""

    def __init__(self, examples, seed: int | None):
        super().__init__(examples)
        self.seed = seed

    def __reduce__(self):
        return (ExampleBatch, (list(self), self.seed))


class SeededBatchSampler:
    """
    Per-epoch permutation of `num_examples` rows, cut into per-device batches of `batch_size`, this process's share.
    Only complete optimiser steps are kept per epoch (`chunks_per_step` = processes x accumulation chunks each).
    """

    def __init__(self, num_examples, batch_size, seed, num_processes=1, process_index=0, accumulation=1, shuffle=True):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.chunks_per_step = num_processes * accumulation
        self.shuffle = shuffle
        self.steps_per_epoch = (num_examples // batch_size) // self.chunks_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{num_examples} training examples do not fill one optimiser step of "
                f"{batch_size * self.chunks_per_step} (batch_size); use a smaller batch_size or more data."
            )
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch` from optimiser step `start_step` of it (resume)."""
        self.epoch, self.start_step = epoch, start_step

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_examples)
        generator = torch.Generator().manual_seed(derive_seed("permutation", self.seed, epoch))
        return torch.randperm(self.num_examples, generator=generator)

    def __iter__(self):
        order = self.permutation(self.epoch)
        first = self.start_step * self.chunks_per_step
        last = self.steps_per_epoch * self.chunks_per_step
        for chunk in range(first, last):
            if chunk % self.num_processes != self.process_index:
                continue
            rows = order[chunk * self.batch_size : (chunk + 1) * self.batch_size].tolist()
            yield KeyedBatch(rows, derive_seed("augment", self.seed, self.epoch, chunk))

    def __len__(self):
        return (self.steps_per_epoch - self.start_step) * self.chunks_per_step // self.num_processes


class KeyedDataset(Dataset):
    """Wraps a map-style dataset: `__getitems__(KeyedBatch)` -> `ExampleBatch` with the batch's seed."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def __getitems__(self, keys):
        rows = list(keys)
        if hasattr(self.dataset, "__getitems__"):
            examples = self.dataset.__getitems__(rows)
        else:
            examples = [self.dataset[i] for i in rows]
        return ExampleBatch(examples, getattr(keys, "seed", None))


class StreamBatches(IterableDataset):
    """
    Streaming: groups a `datasets.IterableDataset` into per-device batches (`ExampleBatch`es with seeds), this
    process's share of the stream, reshuffled per epoch.
    """

    def __init__(self, stream, batch_size, seed, num_processes=1, process_index=0, shuffle_buffer_size=10_000):
        if shuffle_buffer_size > 0:
            stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        if num_processes > 1:
            stream = split_dataset_by_node(stream, rank=process_index, world_size=num_processes)
        self.stream, self.batch_size, self.seed, self.process_index = stream, batch_size, seed, process_index
        self.epoch, self.batches_done = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch
        self.stream.set_epoch(epoch)
        self.batches_done = 0 if start_step == 0 else self.batches_done

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]

    def __iter__(self):
        pending = []
        for example in self.stream:
            pending.append(example)
            if len(pending) == self.batch_size:
                seed = derive_seed("augment-stream", self.seed, self.epoch, self.process_index, self.batches_done)
                self.batches_done += 1
                yield ExampleBatch(pending, seed)
                pending = []


def can_pin_memory() -> bool:
    """Whether page-locked ("pinned") batches can help: only with an accelerator to copy them to (on a CPU-only
    machine torch would ignore the request, with a warning)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def build_train_loader(dataset, collate_fn, batch_size, seed, num_processes, process_index, accumulation,
                       num_workers=0, shuffle_buffer_size=10_000, pin_memory=False):
    """(DataLoader, sampler-or-stream with `set_epoch(epoch, start_step)`) for the training split. `pin_memory`:
    batches in page-locked memory, so that `move_to_device(..., non_blocking=True)` copies them to the GPU
    asynchronously (ignored without an accelerator)."""
    pin_memory = bool(pin_memory) and can_pin_memory()
    # A private generator: the DataLoader must not draw from the global RNG (dropout's), or a resumed run would
    # consume one draw more than an uninterrupted one.
    generator = torch.Generator().manual_seed(derive_seed("loader", seed))
    if isinstance(dataset, StreamingDataset):
        if num_workers > 0:
            raise ValueError(
                "`num_workers` must be 0 with `streaming`: the stream's position is saved for resuming from the main "
                "process (use more workers with map-style data)."
            )
        stream = StreamBatches(dataset, batch_size, seed, num_processes, process_index, shuffle_buffer_size)
        loader = DataLoader(stream, batch_size=None, collate_fn=collate_fn, num_workers=0, generator=generator,
                            pin_memory=pin_memory)
        return loader, stream
    sampler = SeededBatchSampler(len(dataset), batch_size, seed, num_processes, process_index, accumulation)
    loader = DataLoader(
        KeyedDataset(dataset), batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        generator=generator, persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
        pin_memory=pin_memory,
    )
    return loader, sampler


def build_eval_loader(dataset, collate_fn, batch_size, num_workers=0, pin_memory=False):
    """A plain, ordered loader for evaluation (Accelerate shards it; `gather_for_metrics` drops the padding)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn, num_workers=num_workers,
                      pin_memory=bool(pin_memory) and can_pin_memory())
