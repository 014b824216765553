"""cnn/loops.py: the two pipelines agree, and the tutorial model learns on real images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnn import cache, data, loops
from cnn.model import Net


def test_resident_tensor_equals_the_tutorial_transform():
    arrays = data.synthetic_arrays(n_train=20, n_test=10)
    x, y = loops.resident_tensors(arrays.train_x, arrays.train_y, torch.device("cpu"))
    dataset = loops.CIFAR10Images(arrays.train_x, arrays.train_y, arrays.classes, loops.tutorial_transform())
    for i in (0, 7, 19):
        image, label = dataset[i]
        torch.testing.assert_close(x[i], image, atol=1e-6, rtol=0)
        assert label == y[i].item()


def test_resident_batches_cover_every_image_once_per_epoch():
    x = torch.arange(10).float().view(10, 1)
    y = torch.arange(10)
    generator = torch.Generator().manual_seed(0)
    batches = list(loops.resident_batches(x, y, 4, generator))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))
    again = list(loops.resident_batches(x, y, 4, generator))
    assert torch.cat([b[1] for b in again]).tolist() != torch.cat([b[1] for b in batches]).tolist()


def test_tutorial_loader_batches_like_the_tutorial():
    arrays = data.synthetic_arrays(n_train=10, n_test=10)
    loader = loops.tutorial_loader(arrays.train_x, arrays.train_y, arrays.classes, 4, num_workers=0)
    inputs, labels = next(iter(loader))
    assert inputs.shape == (4, 3, 32, 32) and inputs.dtype == torch.float32 and labels.dtype == torch.int64
    assert -1.0 <= inputs.min() and inputs.max() <= 1.0


def test_on_step_stops_the_loop_and_sees_each_batch_size():
    arrays = data.synthetic_arrays(n_train=40, n_test=10)
    x, y = loops.resident_tensors(arrays.train_x, arrays.train_y, torch.device("cpu"))
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    seen = []
    loss = loops.train_epoch(net, optimizer, loops.resident_batches(x, y, 8, torch.Generator()),
                             item_every_step=False, on_step=lambda n: seen.append(n) or len(seen) == 3)
    assert seen == [8, 8, 8] and np.isfinite(loss)


def test_evaluate_counts_per_class():
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), 2), 10).float()

    y = torch.tensor([2, 2, 3, 3, 3, 2])
    overall, per_class = loops.evaluate(Constant(), torch.zeros(6, 3, 32, 32), y, batch_size=4)
    assert overall == 50.0 and per_class[2] == 100.0 and per_class[3] == 0.0 and np.isnan(per_class[0])


def test_tutorial_model_learns_on_real_cifar10_images(mini: Path):
    """10 epochs at batch 4 on the 820 real training images: well above the 10% of chance."""
    arrays = cache.load_arrays(data.prepare_cifar10(mini, verify=False, download=False).cache_dir)
    torch.manual_seed(0)
    device = torch.device("cpu")
    x, y = loops.resident_tensors(arrays.train_x, arrays.train_y, device)
    test_x, test_y = loops.resident_tensors(arrays.test_x, arrays.test_y, device)
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    losses = [loops.train_epoch(net, optimizer, loops.resident_batches(x, y, 4, generator), item_every_step=False)
              for _ in range(10)]
    accuracy, per_class = loops.evaluate(net, test_x, test_y)
    assert losses[-1] < losses[0]
    assert accuracy >= 20.0, f"test accuracy {accuracy:.1f}% after 10 epochs on real images"
    assert len(per_class) == 10


def test_resident_tensors_decode_in_slices_under_mallocs_mmap_threshold(monkeypatch):
    # a temporary of 128 KiB or more, once freed, would raise glibc's mmap threshold and change how malloc
    # serves the training loop after it (cnn/loops.py): every copy made while decoding stays under it
    images = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(300) % 10
    sizes, real_array = [], np.array

    def recording_array(*args, **kwargs):
        out = real_array(*args, **kwargs)
        sizes.append(out.nbytes)
        return out

    monkeypatch.setattr(np, "array", recording_array)
    x, y = loops.resident_tensors(images, labels, torch.device("cpu"))
    monkeypatch.setattr(np, "array", real_array)
    assert sizes and max(sizes) < 128 * 1024
    # numerically the tutorial's transform, whole: (pixel / 255 - 0.5) / 0.5, NCHW
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    assert x.is_contiguous() and torch.allclose(x, expected, atol=1e-6) and y.tolist() == labels.tolist()


def test_the_tutorials_dataset_holds_its_images_in_memory_as_torchvisions_does(synthetic):
    """Read through a memory map, each epoch's fresh workers fault every page in again: 1.047x a step at batch 4."""
    arrays = cache.load_arrays(synthetic.cache_dir)
    assert isinstance(arrays.train_x, np.memmap)
    dataset = loops.tutorial_loader(arrays.test_x, arrays.test_y, arrays.classes, 4, num_workers=0).dataset
    assert type(dataset.data) is np.ndarray and not np.shares_memory(dataset.data, arrays.test_x)
    np.testing.assert_array_equal(dataset.data, arrays.test_x)
    x, y = dataset[7]
    assert x.shape == (3, 32, 32) and y == int(arrays.test_y[7])


def _rss_file_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssFile:")))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux's /proc tells the mapped pages apart")
def test_a_memory_mapped_set_copied_in_leaves_its_pages_out_of_the_resident_set(tmp_path: Path):
    images = np.random.default_rng(0).integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8)  # 30 MB
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    before = _rss_file_kb()
    copy = loops.in_memory(mapped)
    assert type(copy) is np.ndarray and not np.shares_memory(copy, mapped)
    np.testing.assert_array_equal(copy, images)
    assert _rss_file_kb() - before < 8 * 1024  # read whole, the map alone would hold 30 MB more
    assert loops.in_memory(images) is images  # already in memory: as it is
