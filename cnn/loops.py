"""Training and evaluation loops for the two input pipelines.

`tutorial`: what the tutorial does: a torchvision-style dataset with ToTensor +
Normalize per image, `DataLoader(shuffle=True, num_workers=2)`, a copy to the
device per batch and `loss.item()` every step.

`resident`: the data set decoded once into a normalised tensor on the device,
shuffled each epoch by an index permutation, with no per-step host synchronisation.

The loops take an optional `on_step(n_images) -> bool` hook, called after every
step; returning True stops the loop. A caller uses it to measure or to cap steps.
"""
from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms
from torchvision.datasets import VisionDataset

from cnn.normalised import MEAN, STD, normalise_into

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
OnStep = Callable[[int], bool]
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def tutorial_transform() -> transforms.Compose:
    """The tutorial's per-image transform."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def in_memory(images: np.ndarray) -> np.ndarray:
    """`images` copied out of a memory map, whose pages are then given back to the page cache: read once, they
    would stay in this process's resident set (and its peak RSS) beside the copy."""
    if not isinstance(images, np.memmap):
        return images
    copy = np.array(images)
    if getattr(images, "_mmap", None) is not None and hasattr(mmap, "MADV_DONTNEED"):
        images._mmap.madvise(mmap.MADV_DONTNEED)  # a read-only file's pages: read again from the cache if touched
    return copy


class CIFAR10Images(VisionDataset):
    """torchvision's CIFAR10 item semantics (PIL image -> transform) over arrays already decoded, held in memory
    as torchvision's are: a memory-mapped cache is copied in (150 MB, about 0.1 s). Read through the map, each
    epoch's fresh DataLoader workers faulted every page in again and went through memmap's own `__getitem__`:
    training at batch 4 took 1.047x as long a step (median of 9 alternating rounds, 0.985-1.072)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], transform=None):
        super().__init__(root=None, transform=transform)
        self.data, self.targets, self.classes = in_memory(images), labels, classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(np.asarray(self.data[index]))
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


def tutorial_loader(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], batch_size: int,
                    shuffle: bool = True, num_workers: int = 2, pin_memory: bool = False,
                    seed: int = 0, shard: tuple[int, int] | None = None) -> DataLoader:
    """The tutorial's DataLoader (shuffle for training, not for testing).

    `shard=(rank, world_size)`: data-parallel training, each rank reading its part through a
    DistributedSampler (call `loader.sampler.set_epoch(epoch)` every epoch, as its users do).
    """
    dataset = CIFAR10Images(images, labels, classes, transform=tutorial_transform())
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if shard is not None:
        sampler = DistributedSampler(dataset, num_replicas=shard[1], rank=shard[0], shuffle=shuffle, seed=seed)
        shuffle = False  # the sampler shuffles
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, generator=generator, persistent_workers=False)


def tutorial_batches(loader: DataLoader, device: torch.device, non_blocking: bool = False,
                     memory_format: torch.memory_format = torch.contiguous_format) -> Iterator:
    """Batches from the loader, copied to the device one at a time, as the tutorial does."""
    for inputs, labels in loader:
        yield (inputs.to(device, non_blocking=non_blocking, memory_format=memory_format),
               labels.to(device, non_blocking=non_blocking))


# glibc's malloc serves a block of 128 KiB or more with its own mmap, and when such a block of up to 32 MiB is
# freed it raises that threshold (and the heap's trim threshold) for the rest of the process, unless the process
# pinned them (the harness does, bench/measuring/allocator.py). So that a process that did not pin them still runs its loop
# as a fresh script would, the data set is decoded in slices under that threshold, and nothing freed here moves it.
_SLICE_BYTES = 96 * 1024


def resident_tensors(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole set as one normalised NCHW float tensor on the device (numerically the tutorial's transform),
    decoded in slices of under 128 KiB so that no freed temporary changes how malloc serves the loop after it."""
    x = torch.empty((len(images), 3, 32, 32), dtype=torch.float32, device=device)
    normalise_into(x, images, _SLICE_BYTES)
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def resident_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator,
                     shuffle: bool = True, shard: tuple[int, int] | None = None) -> Iterator:
    """One epoch of batches, shuffled by a permutation made on the device (no host sync).

    `shard=(rank, world_size)`: every rank draws the same permutation (same seed, same epoch) and
    takes every world_size-th image from its rank on, all ranks the same count (the remainder
    of the division is left out of the epoch), so they run the same number of steps.
    """
    n = len(y)
    order = torch.randperm(n, device=x.device, generator=generator) if shuffle else None
    if shard is not None:
        rank, world = shard
        if order is None:
            order = torch.arange(n, device=x.device)
        order = order[rank::world][:n // world]
        n = len(order)
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]


def eager_step(net: nn.Module, optimizer: torch.optim.Optimizer, amp: torch.dtype | None = None) -> Step:
    """The tutorial's training step; with `amp`, forward and loss run under autocast to that dtype."""
    criterion = nn.CrossEntropyLoss()
    device_type = next(net.parameters()).device.type

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad()
        # no autocast cache: a cached cast would be captured into a CUDA graph and go stale
        with torch.autocast(device_type, dtype=amp, enabled=amp is not None, cache_enabled=False):
            loss = criterion(net(inputs), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def graphed_step(net: nn.Module, optimizer: torch.optim.Optimizer, example: tuple[torch.Tensor, torch.Tensor],
                 amp: torch.dtype | None = None) -> Step:
    """The whole training step (forward, backward, optimizer) captured once in a CUDA graph and replayed.

    Follows PyTorch's whole-network capture recipe: warm up on a side stream, capture with static
    input buffers, then copy each batch into them and replay. For a model this small the step is
    mostly kernel-launch overhead, which replaying removes. A batch of another size (the last,
    partial one) runs eagerly.
    """
    eager = eager_step(net, optimizer, amp)
    static_x, static_y = example[0].clone(), example[1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up creates the momentum buffers and autotunes before capture
            eager(static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = eager(static_x, static_y)

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if inputs.shape != static_x.shape:
            return eager(inputs, labels)
        static_x.copy_(inputs)
        static_y.copy_(labels)
        graph.replay()
        return static_loss

    return step


def train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, *,
                item_every_step: bool, on_step: OnStep | None = None, step: Step | None = None) -> float:
    """One pass over `batches`; returns the mean training loss.

    `item_every_step` is the tutorial's `running_loss += loss.item()`, a host
    synchronisation per step; without it the loss is summed on the device.
    `step` replaces the tutorial's step (e.g. with autocast or a CUDA graph).
    """
    step = step or eager_step(net, optimizer)
    net.train()
    running: float | torch.Tensor = 0.0
    steps = 0
    for inputs, labels in batches:
        loss = step(inputs, labels)
        running += loss.item() if item_every_step else loss.detach()
        steps += 1
        if on_step is not None and on_step(len(labels)):
            break
    return float(running) / max(steps, 1)


def infer_epoch(net: nn.Module, batches: Batches, *, item_every_step: bool,
                on_step: OnStep | None = None) -> None:
    """Forward passes only, as the tutorial's test loop (`correct += (...).sum().item()`)."""
    net.eval()
    correct: int | torch.Tensor = 0
    with torch.inference_mode():
        for inputs, labels in batches:
            predicted = net(inputs).argmax(1)
            hits = (predicted == labels).sum()
            correct += hits.item() if item_every_step else hits
            if on_step is not None and on_step(len(labels)):
                break


def tutorial_accuracy(net: nn.Module, batches: Batches, on_step: OnStep | None = None) -> float:
    """The tutorial's first test pass: overall accuracy in percent over its test DataLoader, under no_grad."""
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            _, predicted = torch.max(net(images).data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
            if on_step is not None and on_step(len(labels)):
                break
    return 100.0 * correct / max(total, 1)


def tutorial_class_accuracy(net: nn.Module, batches: Batches, classes: tuple[str, ...],
                            on_step: OnStep | None = None) -> dict[str, float]:
    """The tutorial's second test pass: accuracy per class in percent, counted image by image in Python as the
    tutorial counts it."""
    correct_pred = {name: 0 for name in classes}
    total_pred = {name: 0 for name in classes}
    with torch.no_grad():
        for images, labels in batches:
            _, predictions = torch.max(net(images), 1)
            for label, prediction in zip(labels, predictions):
                if label == prediction:
                    correct_pred[classes[label]] += 1
                total_pred[classes[label]] += 1
            if on_step is not None and on_step(len(labels)):
                break
    return {name: 100.0 * correct_pred[name] / total_pred[name] if total_pred[name] else float("nan")
            for name in classes}


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int = 10,
             batch_size: int = 1000) -> tuple[float, list[float]]:
    """Test accuracy in percent, overall and per class, as the tutorial prints them."""
    net.eval()
    correct = torch.zeros(num_classes, dtype=torch.long, device=y.device)
    total = torch.bincount(y, minlength=num_classes)
    with torch.inference_mode():
        for start in range(0, len(y), batch_size):
            labels = y[start:start + batch_size]
            predicted = net(x[start:start + batch_size]).argmax(1)
            correct += torch.bincount(labels[predicted == labels], minlength=num_classes)
    correct, total = correct.cpu(), total.cpu()
    overall = 100.0 * correct.sum().item() / max(total.sum().item(), 1)
    per_class = [100.0 * c / t if t else float("nan") for c, t in zip(correct.tolist(), total.tolist())]
    return overall, per_class
