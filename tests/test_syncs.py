"""Host syncs of the training step: none inside a step, a handful per epoch.

On a CPU, tests/synctrace.py's SyncTrace tells the tensors that would live on the training device
from host tensors by where they come from, and counts device reads and host-to-device copies. Its
own tests below show it catches the syncs the trainer used to have (AveragedModel's step counter
and .item(), the RandAugment sign table, bincount(...).tolist(), torchvision's affine kernels)
and ignores host-side bookkeeping. On CUDA, torch.cuda.set_sync_debug_mode("error") guards the
steps of a real run.
"""

import pytest
import torch
import torch.nn.functional as F
from synctrace import SyncTrace
from torch.optim.swa_utils import AveragedModel
from torchvision.transforms import v2

import stl_tune.train as T
from stl_tune import config as C
from stl_tune.augment import augment_images
from stl_tune.config import AugmentConfig
from stl_tune.data import write_fake_stl10

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: more threads only contend
CPU = torch.device("cpu")


def on_device(x: torch.Tensor) -> torch.Tensor:
    return x.to(CPU)  # under a SyncTrace: a copy to the training device


# ----------------------------------------------------------------------------- the tracer itself
def test_trace_counts_reads_of_device_tensors():
    with SyncTrace() as trace:
        x = on_device(torch.arange(8.0))
        trace.reset()
        x.sum().item()
        x.tolist()
        bool(x.max() > 3)
        x.cpu()
        x.nonzero()
        x[x > 3]  # boolean-mask indexing sizes its output from the data
        torch.bincount(x.long())
        assert trace.reads == 7 and trace.copies == 0, trace.where()

        trace.reset()
        x[x > 3] = 0.0  # index_put_'s masked_fill path: no read
        x.nonzero_static(size=8)
        F.one_hot(x.long(), 8)  # its range checks run on a CPU only
        x.mul(2).add_(1).clamp_(max=5)
        assert trace.syncs == 0, trace.where()


def test_trace_counts_copies_to_the_device_and_ignores_host_tensors():
    with SyncTrace() as trace:
        host = torch.tensor([1.0, 2.0, 3.0])
        x = on_device(torch.zeros(3))
        torch.tensor([1.0, 2.0, 3.0], device=x.device) + x  # made on the device from a list
        x.copy_(host)
        host.to(CPU, non_blocking=True)
        assert (trace.copies, trace.count("async copy"), trace.reads) == (3, 1, 0), trace.where()

        trace.reset()
        host.sum().item()  # host values: no device involved
        host.tolist()
        counter = torch.tensor(0.0, device="cpu")  # how torch.optim makes its host step counters
        counter += 1
        float(counter)
        torch.zeros(3, device=x.device).add_(x)  # made on the device directly
        assert trace.syncs == 0, trace.where()


def test_trace_catches_the_syncs_the_trainer_used_to_have():
    """AveragedModel's EMA with a tensor decay (2 copies of its step counter and an .item() per
    update), the RandAugment sign table moved per call, bincount(...).tolist(), and
    torchvision's affine and sharpness kernels building tensors from Python lists."""
    with SyncTrace() as trace:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).to(CPU)

        def lerp(ema, current, n):
            if torch.is_floating_point(ema[0]):
                torch._foreach_lerp_(ema, current, 1 - torch.clamp((1 + n) / (10 + n), max=0.99))

        ema = AveragedModel(model, multi_avg_fn=lerp, use_buffers=True)
        ema.update_parameters(model)  # the first update copies
        trace.reset()
        ema.update_parameters(model)
        assert (trace.copies, trace.reads) == (2, 1), trace.where()

        trace.reset()
        signed = torch.tensor([False, True, True, False])
        ops = torch.randint(0, 4, (2, 16), device=CPU)
        negative = (torch.rand(2, 16, device=CPU) < 0.5) & signed.to(CPU)[ops]
        torch.bincount((ops * 2 + negative).flatten(), minlength=8).tolist()
        assert (trace.copies, trace.reads) == (1, 2), trace.where()

        trace.reset()
        images = on_device(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
        trace.reset()
        v2.functional.affine(images, angle=10.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0])
        v2.functional.adjust_sharpness(images, 1.5)
        assert (trace.copies, trace.reads) == (3, 0), trace.where()


def test_trace_window_and_op_count():
    with SyncTrace(counting=False) as trace:
        x = on_device(torch.ones(3))  # placed, not counted
        x.sum().item()
        assert trace.syncs == 0 and trace.ops == 0
        trace.start()
        x.sum().item()
        assert trace.reads == 1 and trace.ops == 2  # sum, _local_scalar_dense


# ------------------------------------------------------------------------------- augmentation
def test_augmentation_call_has_one_read_and_no_copy_once_its_tables_exist():
    cfg = AugmentConfig()  # crop, flip, RandAugment with two ops per image
    with SyncTrace() as trace:
        x = on_device(torch.randint(0, 256, (256, 3, 20, 20), dtype=torch.uint8))
        trace.reset()
        augment_images(x, cfg)  # builds (or finds) the sign table, pixel maps, sharpness kernel
        assert trace.copies <= 3, trace.where()
        trace.reset()
        augment_images(x, cfg)
        assert (trace.reads, trace.copies) == (1, 0), trace.where()  # the sub-batch sizes
        trace.reset()
        augment_images(x, AugmentConfig(randaugment_ops=0))
        assert trace.syncs == 0, trace.where()


# ------------------------------------------------------------------------------ a training run
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Data of this module only: the trainer's cached device copy must be made under the trace."""
    return write_fake_stl10(tmp_path_factory.mktemp("syncs"), train_per_class=40, test_per_class=1)


def tiny(data_dir, **overrides) -> C.TrainConfig:
    """2 epochs of 45 steps (batch 8 of 360 training images), the first with Mixup/CutMix, with
    validation after each; crop, flip, RandAugment, EMA with warm-up, as the default recipe."""
    base = {
        "data.dir": str(data_dir),
        "data.image_size": 16,
        "model.width": 4,
        "model.blocks": [1, 1, 1, 1],
        "optim.batch_size": 8,
        "optim.epochs": 2,
        "optim.warmup_epochs": 1,
        "augment.mix_epochs": 1,
        "runtime.device": "cpu",
    }
    return C.from_dict(None, {**base, **overrides})


@pytest.mark.slow
def test_training_run_has_under_a_quarter_sync_per_step(data_dir, monkeypatch):
    """Counted from the first augmentation call to the end of train(): everything per step and per
    epoch, not the one-off setup before it (the data and the model moved to the device: one copy
    per tensor). The per-epoch reads (mean loss, validation accuracy, one per augmentation chunk)
    and the final confusion matrix are a dozen for the whole run; anything per step would be 90+."""
    cfg = tiny(data_dir)
    trace = SyncTrace(counting=False)
    chunks = []

    def augment(*args, **kwargs):
        trace.start()
        chunks.append(1)
        return augment_images(*args, **kwargs)

    monkeypatch.setattr(T, "augment_images", augment)
    with trace:
        result = T.train(cfg)
    steps = 2 * (360 // 8)
    assert result.epochs_run == 2 and len(chunks) == 2  # 360 images: one chunk per epoch
    assert trace.syncs / steps < 0.25, f"{trace.syncs} syncs in {steps} steps:\n{trace.where()}"
    augment_reads = sum(n for (kind, line), n in trace.events.items() if kind == "read" and "augment.py" in line)
    assert augment_reads == len(chunks), trace.where()  # the trace sees the device work


# ----------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_cuda_steps_raise_no_sync_error(data_dir, monkeypatch):
    """set_sync_debug_mode("error") around every training step after the first epoch (compilation
    and cuDNN autotuning may sync once, in epoch 1): from the batch handed to the step to the next
    batch asked for. Fetching a batch may augment a chunk, whose one read is allowed. Epoch 2
    mixes (Mixup/CutMix), epoch 3 does not."""
    real, epochs = T._epoch_batches, []

    def guarded(*args, **kwargs):
        epochs.append(1)
        batches = real(*args, **kwargs)
        try:
            while True:
                torch.cuda.set_sync_debug_mode("default")
                batch = next(batches, None)
                if batch is None:
                    return
                torch.cuda.set_sync_debug_mode("error" if len(epochs) > 1 else "default")
                yield batch
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(T, "_epoch_batches", guarded)
    result = T.train(tiny(data_dir, **{"runtime.device": "cuda", "optim.epochs": 3, "augment.mix_epochs": 2}))
    assert result.epochs_run == 3 and len(epochs) == 3
