import io
import warnings

import pytest
import torch
from rich.console import Console
from torch.optim.swa_utils import AveragedModel

import stl_tune.train as T
from stl_tune import config as C
from stl_tune.data import write_fake_stl10
from stl_tune.errors import UserError
from stl_tune.model import build_model
from stl_tune.progress import EpochProgress
from stl_tune.train import (
    Ema,
    label_smoothing_at,
    make_optimizer,
    make_scheduler,
    switched_on,
    train,
    use_compile_cache,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: more threads only contend


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fake")
    write_fake_stl10(out, train_per_class=40, test_per_class=10, seed=0)
    return out


def tiny(data_dir, **overrides) -> C.TrainConfig:
    """A config that trains in about a second per epoch on a 2-core CPU."""
    base = {
        "data.dir": str(data_dir),
        "data.image_size": 24,
        "model.width": 8,
        "model.blocks": [1, 1, 1, 1],
        "optim.batch_size": 32,
        "optim.epochs": 3,
        "optim.warmup_epochs": 1,
        "augment.mix_epochs": 1,
        "augment.crop_padding": 3,
        "ema.decay": 0.9,
        "eval.batch_size": 200,
        "runtime.device": "cpu",
    }
    return C.from_dict(None, {**base, **overrides})


# ------------------------------------------------------------------------------------ schedules


def test_lr_schedule_warms_up_linearly_then_anneals_to_zero():
    model = torch.nn.Linear(2, 2)
    cfg = C.OptimConfig(lr=0.1, epochs=10, warmup_epochs=2, warmup_start=0.01)
    opt = make_optimizer(model, cfg, fused=False)
    sched = make_scheduler(opt, cfg, steps_per_epoch=10)  # 100 steps, 20 of warm-up
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[10] == pytest.approx(0.001 + (0.1 - 0.001) * 10 / 20)
    assert lrs[20] == pytest.approx(0.1)
    assert lrs[60] == pytest.approx(0.05)  # cosine half-way
    assert lrs[99] < 1e-3 and all(a >= b for a, b in zip(lrs[20:], lrs[21:]))


def test_weight_decay_skips_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = make_optimizer(model, C.OptimConfig(name="sgd", weight_decay=0.01), fused=False)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and [p.ndim for p in decayed["params"]] == [4]
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert opt.param_groups[0]["nesterov"] is True
    no_momentum = make_optimizer(model, C.OptimConfig(name="sgd", momentum=0.0, nesterov=True), fused=False)
    assert no_momentum.param_groups[0]["nesterov"] is False  # torch would refuse Nesterov here


@pytest.mark.parametrize(
    ("shape", "epoch", "expected"),
    [
        ("constant", 7, 0.1),
        ("linear", 0, 0.2),
        ("linear", 10, 0.0),
        ("linear", 5, 0.1),
        ("cosine", 5, 0.1),
        ("cosine", 10, 0.0),
    ],
)
def test_label_smoothing_schedule(shape, epoch, expected):
    cfg = C.from_dict(
        None,
        {
            "smoothing.shape": shape,
            "smoothing.start": 0.1 if shape == "constant" else 0.2,
            "smoothing.end": 0.0,
            "optim.epochs": 11,
            "augment.mix_epochs": 0,
        },
    )
    assert label_smoothing_at(epoch, cfg) == pytest.approx(expected)


def test_label_smoothing_is_turned_down_while_mixing():
    cfg = C.from_dict(
        None,
        {"smoothing.shape": "constant", "smoothing.start": 0.1, "smoothing.mix_scale": 0.25, "augment.mix_epochs": 3},
    )
    assert [label_smoothing_at(e, cfg) for e in (0, 2, 3)] == pytest.approx([0.025, 0.025, 0.1])


def test_ema_decay_copies_first_then_warms_up_then_holds():
    model = torch.nn.Linear(2, 2)
    warm, plain = Ema(model, decay=0.99, warmup=True), Ema(model, decay=0.99, warmup=False)
    assert [warm.decay_at(n) for n in (0, 1, 10_000)] == pytest.approx([0.0, 2 / 11, 0.99])
    assert [plain.decay_at(n) for n in (0, 1, 10_000)] == pytest.approx([0.0, 0.99, 0.99])


def _averaged_model_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """The EMA the trainer used before its own: AveragedModel with a device-tensor decay."""

    def update(ema, current, n_averaged):
        if not torch.is_floating_point(ema[0]):
            torch._foreach_copy_(ema, current)
            return
        torch._foreach_lerp_(ema, current, 1 - torch.clamp((1 + n_averaged) / (10 + n_averaged), max=decay))

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def test_ema_equals_the_averaged_model_it_replaces():
    torch.manual_seed(0)
    model = build_model(C.ModelConfig(width=4, blocks=[1, 1, 1, 1]), 10)  # BN: float and integer buffers
    ema, reference = Ema(model, decay=0.9, warmup=True), _averaged_model_ema(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(40):  # warm-up (decay (1+n)/(10+n) < 0.9 up to n = 80) and beyond
        loss = model(torch.rand(8, 3, 16, 16)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        reference.update_parameters(model)
        if step == 0:  # the first update copies, exactly
            assert all(torch.equal(a, b) for a, b in zip(ema.module.state_dict().values(), model.state_dict().values()))
    ours, theirs = ema.module.state_dict(), reference.module.state_dict()
    assert ours.keys() == theirs.keys() and ema.updates == reference.n_averaged.item() == 40
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6), key
    assert not torch.allclose(ours["head.weight"], model.head.weight)  # an average, not a copy
    assert ours["stem.0.1.num_batches_tracked"].item() == 40  # integer buffers follow the model


@pytest.mark.cuda
def test_ema_update_waits_for_nothing_on_cuda():
    model = build_model(C.ModelConfig(width=4, blocks=[1, 1, 1, 1]), 10).cuda()
    ema = Ema(model, decay=0.9, warmup=True)
    torch.cuda.set_sync_debug_mode("error")  # a device read or a blocking copy raises
    try:
        for _ in range(3):
            ema.update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ema.updates == 3


def test_augmentation_chunk_is_sized_by_bytes():
    def chunk(device: str, size: int = 96, batch: int = 64, **runtime) -> int:
        over = {"data.image_size": size, "optim.batch_size": batch, **{f"runtime.{k}": v for k, v in runtime.items()}}
        return T.chunk_images(C.from_dict(None, over), 3 * size * size, torch.device(device))

    assert (chunk("cuda"), chunk("cpu")) == (4096, 512)  # the recipe's 96 px, batch 64
    assert chunk("cuda", size=224) == 704 and chunk("cpu", size=32, batch=100) == 4600  # whole batches
    for size in (96, 224, 512):  # the budget holds whatever the size: the crop's int64 index too
        assert 3 * size * size * chunk("cuda", size=size) <= T.CHUNK_MIB["cuda"] * 2**20
        assert 8 * size * size * chunk("cuda", size=size) <= 0.31e9  # 1.6 GB at 224 px when 4,096 images
    assert chunk("cpu", size=512, batch=256) == 256  # at least one batch
    assert chunk("cpu", augment_chunk_mib=108) == 4096 and chunk("cuda", augment_chunk_mib=1) == 64


# ------------------------------------------------------------------------------------- training


def test_short_run_learns_well_above_chance(data_dir):
    cfg = tiny(data_dir, **{"optim.epochs": 8, "optim.lr": 3e-3, "augment.mix_epochs": 0, "augment.randaugment_ops": 0})
    result = train(cfg)
    assert result.status == "completed" and result.epochs_run == 8
    assert result.best_val_acc > 0.3  # 10 classes: chance is 0.1
    assert [h["epoch"] for h in result.history] == list(range(1, 9))
    assert result.test_acc is None  # the test split is not touched unless asked
    assert result.param_count == sum(p.numel() for p in result.model.parameters())


def test_same_seed_same_metrics_and_other_seed_differs(data_dir):
    a, b = train(tiny(data_dir)), train(tiny(data_dir))
    assert a.history and [(h["train_loss"], h["val_acc"]) for h in a.history] == [
        (h["train_loss"], h["val_acc"]) for h in b.history
    ]
    c = train(tiny(data_dir, seed=1))
    assert [h["train_loss"] for h in c.history] != [h["train_loss"] for h in a.history]


def test_resume_equals_uninterrupted(data_dir, tmp_path):
    cfg = tiny(data_dir, **{"optim.epochs": 4, "runtime.checkpoint_interval_s": 0})
    full = train(cfg, checkpoint=tmp_path / "full.pt")
    ckpt = tmp_path / "cut.pt"
    cut = train(cfg, on_epoch_end=lambda m: m.epoch == 2, checkpoint=ckpt)  # "killed" after epoch 2
    assert cut.status == "stopped" and cut.epochs_run == 2
    resumed = train(cfg, checkpoint=ckpt)
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 4

    def strip(hs):
        return [{k: v for k, v in h.items() if k not in ("seconds", "checkpointed")} for h in hs]

    assert strip(resumed.history) == strip(full.history)
    for p, q in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(p, q)


def test_checkpoint_written_on_a_cpu_resumes_on_a_gpu_and_back(data_dir, tmp_path, monkeypatch):
    """torch.cuda.set_rng_state takes a ByteTensor: a CPU checkpoint hands it nothing (it stored an
    empty float tensor, a TypeError on a GPU: the trial failed and its retry started at epoch 0)."""
    cfg = tiny(data_dir, **{"optim.epochs": 2, "runtime.checkpoint_interval_s": 0})
    ckpt = tmp_path / "c.pt"
    train(cfg, on_epoch_end=lambda m: True, checkpoint=ckpt)  # stopped after epoch 1, on a CPU
    state = torch.load(ckpt, weights_only=True)
    passed = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new_state, device="cuda": passed.append(new_state))
    on_gpu = T._Run(cfg, evaluate_test=False)
    on_gpu.device = torch.device("cuda", 0)  # restore() touches nothing of CUDA but its generator
    on_gpu.restore(state)
    assert passed == [] and on_gpu.epoch == 1
    gpu_state = torch.arange(16, dtype=torch.uint8)  # what torch.cuda.get_rng_state returns: 16 bytes
    on_gpu.restore({**state, "rng_cuda": gpu_state})
    assert len(passed) == 1 and passed[0] is gpu_state
    torch.save({**state, "rng_cuda": gpu_state}, ckpt)  # written on a GPU, resumed on a CPU
    resumed = train(cfg, checkpoint=ckpt)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 2 and len(passed) == 1


def test_callback_sees_every_epoch_and_can_stop(data_dir):
    seen = []
    result = train(tiny(data_dir), on_epoch_end=lambda m: seen.append(m) or m.epoch == 2)
    assert result.status == "stopped" and [m.epoch for m in seen] == [1, 2]
    m = seen[0]
    assert 0 <= m.val_acc <= 1 and m.train_loss > 0 and m.lr > 0 and m.seconds > 0
    assert m.label_smoothing == pytest.approx(label_smoothing_at(0, tiny(data_dir)))


def test_a_results_status_is_an_enum_that_reads_back_from_its_json():
    """metrics.json keeps the status's value, as before the enum: results written earlier still read."""
    import json

    result = T.TrainResult(status=T.TrainStatus.EARLY_STOPPED, epochs_run=3, best_val_acc=0.5, val_acc=0.4)
    written = json.loads(json.dumps(result.to_json()))
    assert written["status"] == "early_stopped"
    back = T.TrainResult(**written)
    assert back.status is T.TrainStatus.EARLY_STOPPED and back.status.finished
    assert [s.finished for s in T.TrainStatus] == [True, True, False, False]  # completed, early_stopped


def test_early_stopping(data_dir, tmp_path):
    # lr ~0 after warm-up start: nothing improves after epoch 1, so patience 2 stops at epoch 3
    cfg = tiny(data_dir, **{"optim.epochs": 10, "optim.lr": 1e-8, "eval.patience": 2})
    result = train(cfg, checkpoint=tmp_path / "c.pt")
    assert result.status == "early_stopped"
    best_epoch = max(result.history, key=lambda h: h["val_acc"])["epoch"]
    assert result.epochs_run == best_epoch + 2
    again = train(cfg, checkpoint=tmp_path / "c.pt")  # killed before its outputs were written
    assert again.status == "early_stopped" and again.epochs_run == result.epochs_run


def test_train_on_val_and_test_scoring(data_dir):
    result = train(tiny(data_dir, **{"data.train_on_val": True, "optim.epochs": 1}), evaluate_test=True)
    assert result.val_acc is None and result.best_val_acc is None
    assert 0 <= result.test_acc <= 1
    cm = torch.tensor(result.confusion)
    assert cm.shape == (10, 10) and cm.sum().item() == 100  # 10 test images per class
    assert result.per_class_acc == [hits / 10 for hits in cm.diag().tolist()]  # exact: counts divided in Python
    assert result.test_acc == cm.diag().sum().item() / 100


def test_accuracy_is_a_count_over_n_not_a_float32_mean():
    """Outside Optuna clients show a trial's value as stored: 0.42, not float32's 0.41999998688697815."""
    pred, target = torch.zeros(50, dtype=torch.long), torch.tensor([0] * 21 + [1] * 29)
    assert (pred == target).float().mean().item() != 0.42  # the float32 mean this replaces
    assert T.accuracy(pred, target) == 0.42
    cm = T.confusion_matrix(pred, target, 3)
    assert T.per_class_accuracy(cm) == [1.0, 0.0, 0.0]  # class 2 has no images
    cm = torch.tensor([[21, 29], [0, 50]])
    assert T.per_class_accuracy(cm) == [0.42, 1.0]


def test_validation_accuracy_is_a_count_over_the_split(data_dir):
    cfg = tiny(data_dir, **{"optim.epochs": 2})
    n = len(T._Run(cfg, evaluate_test=False).val_y)
    result = train(cfg)
    for h in result.history:
        assert h["val_acc"] == round(h["val_acc"] * n) / n


def test_nan_loss_stops_with_diverged_result(data_dir, nan_loss):
    nan_loss(12)  # 11 steps per epoch: the loss turns NaN in epoch 2
    result = train(tiny(data_dir, **{"optim.epochs": 4}))
    assert result.status == "diverged" and result.diverged_epoch == 2 and result.epochs_run == 2
    assert len(result.history) == 1 and result.per_class_acc is None


def test_checkpoints_are_written_at_most_every_interval_and_at_the_end(data_dir, tmp_path):
    saved = train(tiny(data_dir, **{"runtime.checkpoint_interval_s": 3600}), checkpoint=tmp_path / "c.pt")
    assert [h["checkpointed"] for h in saved.history] == [True, False, True]  # first, then the end
    every = train(tiny(data_dir, **{"runtime.checkpoint_interval_s": 0}), checkpoint=tmp_path / "d.pt")
    assert all(h["checkpointed"] for h in every.history)
    assert not any(h["checkpointed"] for h in train(tiny(data_dir)).history)  # no checkpoint path


def test_checkpoint_of_another_config_is_refused(data_dir, tmp_path):
    ckpt = tmp_path / "c.pt"
    train(tiny(data_dir, **{"optim.epochs": 1}), checkpoint=ckpt)
    with pytest.raises(UserError, match="different config"):
        train(tiny(data_dir, **{"optim.epochs": 2}), checkpoint=ckpt)
    # where the data lives and which device runs it are not the recipe: a retry elsewhere resumes
    moved = tiny(data_dir, **{"optim.epochs": 1, "runtime.device": "cpu", "data.dir": f"{data_dir}/."})
    assert train(moved, checkpoint=ckpt).resumed_from_epoch == 1
    state = torch.load(ckpt, weights_only=True)
    key = "stages.0.0.attn.fc1.weight"
    state["model"][key] = state["model"][key][:, :, None, None]  # as torchvision's Conv2d SE saved it
    torch.save(state, ckpt)
    with pytest.raises(UserError, match="written by another version of stl-tune"):
        train(tiny(data_dir, **{"optim.epochs": 1}), checkpoint=ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        train(tiny(data_dir, **{"optim.epochs": 1}), checkpoint=ckpt)


def test_progress_bar_follows_the_callback_resumes_and_chains(data_dir, tmp_path):
    cfg = tiny(data_dir, **{"runtime.checkpoint_interval_s": 0})
    ckpt, seen, out = tmp_path / "c.pt", [], io.StringIO()

    def run(stop_at: int | None) -> str:
        def then(m):  # a chained callback: sees each epoch after the bar, and may stop the run
            seen.append((m.epoch, bar.progress.tasks[0].completed))
            return m.epoch == stop_at

        with EpochProgress(cfg.optim.epochs, then=then, console=Console(file=out, width=100)) as bar:
            return train(cfg, bar.on_epoch_end, checkpoint=ckpt).status

    assert run(stop_at=1) == "stopped"
    assert run(stop_at=None) == "completed"  # resumed at epoch 1: the bar starts there, not at 0
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert "epoch 3/3" in out.getvalue()


# ------------------------------------------------------------------------------------- compile


def test_runtime_switches_auto_means_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert [switched_on("auto", d) for d in (cpu, cuda)] == [False, True]
    assert [switched_on(True, d) for d in (cpu, cuda)] == [True, True]
    assert [switched_on(False, d) for d in (cpu, cuda)] == [False, False]


def test_a_device_this_process_cannot_have_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="^runtime.device=cuda but CUDA is not available on this machine$"):
        T.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # as in a search worker
    assert T.resolve_device("cuda:0") == torch.device("cuda", 0) and T.resolve_device("auto").type == "cuda"
    with pytest.raises(UserError, match=r"^runtime.device=cuda:1 but this process sees 1 GPU \(cuda:0\)$"):
        T.resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"sees 2 GPUs \(cuda:0 to cuda:1\)$"):
        T.resolve_device("cuda:2")


def test_compile_cache_lives_in_the_user_cache_unless_set(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    ours = tmp_path / "stl-tune" / "inductor"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert use_compile_cache() == ours and cache_dir() == str(ours)  # where inductor writes
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # as importing torch._dynamo does
    assert use_compile_cache() == ours and cache_dir() == str(ours)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache() == tmp_path / "mine"


def _spy_on_compile(monkeypatch, backend=None) -> list:
    """Record torch.compile calls; with `backend`, compile with it instead of inductor."""
    calls, real = [], torch.compile

    def compile(model, **kw):
        calls.append(model)
        return real(model, **kw, **({"backend": backend} if backend else {}))

    monkeypatch.setattr(torch, "compile", compile)
    return calls


@pytest.mark.slow
def test_the_cuda_branch_on_a_cpu_learns_and_resumes_exactly(data_dir, tmp_path, monkeypatch):
    """What auto switches on for CUDA, forced on a CPU: bf16 autocast, channels_last, the fused
    optimizer, torch.compile, and the CUDA augmentation chunk."""
    # The trainer's cache (~/.cache/stl-tune/inductor unless TORCHINDUCTOR_CACHE_DIR is set): the
    # first run on a machine compiles (36-154 s on 2 busy cores), later runs load (~4-9 s).
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(use_compile_cache()))  # restored afterwards
    compiled, autocasts, fused = _spy_on_compile(monkeypatch), [], []
    real_autocast, real_optimizer = torch.autocast, T.make_optimizer
    monkeypatch.setattr(torch, "autocast", lambda *a, **kw: autocasts.append(kw["enabled"]) or real_autocast(*a, **kw))
    monkeypatch.setattr(T, "make_optimizer", lambda *a, **kw: fused.append(kw["fused"]) or real_optimizer(*a, **kw))
    cfg = tiny(
        data_dir,
        **{
            "optim.epochs": 4,
            "optim.lr": 3e-3,
            "runtime.checkpoint_interval_s": 0,
            "runtime.amp": True,
            "runtime.channels_last": True,
            "runtime.fused": True,
            "runtime.compile": True,
            "runtime.augment_chunk_mib": T.CHUNK_MIB["cuda"],
        },
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # compiled for real
        full = train(cfg, checkpoint=tmp_path / "full.pt")
        cut = train(cfg, on_epoch_end=lambda m: m.epoch == 2, checkpoint=tmp_path / "cut.pt")
        resumed = train(cfg, checkpoint=tmp_path / "cut.pt")
    assert len(compiled) == 3 and set(autocasts) == {True} and fused == [True] * 3
    assert full.model.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert full.status == "completed" and full.best_val_acc > 0.2  # 10 classes: chance is 0.1
    assert cut.epochs_run == 2 and resumed.resumed_from_epoch == 2

    def strip(hs):
        return [{k: v for k, v in h.items() if k not in ("seconds", "checkpointed", "compile_seconds")} for h in hs]

    assert strip(resumed.history) == strip(full.history)
    for p, q in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(p, q)
    # the first epoch of each process holds its compile, for the search's pace to leave out
    assert full.compile_seconds > 0 and full.seconds > full.compile_seconds
    assert [h["compile_seconds"] for h in full.history] == [full.compile_seconds, 0, 0, 0]
    assert resumed.history[2]["compile_seconds"] == resumed.compile_seconds > 0


def test_auto_switches_nothing_on_on_a_cpu(data_dir, monkeypatch):
    compiled = _spy_on_compile(monkeypatch)
    result = train(tiny(data_dir, **{"optim.epochs": 1}))
    assert result.compile_seconds == 0.0 and compiled == [] and result.history[0]["compile_seconds"] == 0
    assert result.model.stem[0][0].weight.is_contiguous()  # NCHW


def test_failed_compile_warns_once_and_trains_eagerly(data_dir, monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C compiler here")

    _spy_on_compile(monkeypatch, backend=broken_backend)
    with pytest.warns(UserWarning, match="torch.compile failed, training without it: .*no C compiler here") as caught:
        compiled = train(tiny(data_dir, **{"runtime.compile": True, "optim.epochs": 2}))
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    eager = train(tiny(data_dir, **{"optim.epochs": 2}))
    assert compiled.compile_seconds == 0.0 and compiled.status == "completed"
    assert [h["train_loss"] for h in compiled.history] == [h["train_loss"] for h in eager.history]


@pytest.mark.cuda
def test_cuda_bf16_channels_last_run(data_dir):
    result = train(tiny(data_dir, **{"runtime.device": "cuda"}))
    assert result.device.startswith("cuda") and result.best_val_acc is not None


@pytest.mark.cuda
def test_a_checkpoint_moves_between_cpu_and_gpu(data_dir, tmp_path):
    cfg = {"optim.epochs": 3, "runtime.checkpoint_interval_s": 0, "runtime.compile": False}
    ckpt = tmp_path / "c.pt"
    train(tiny(data_dir, **cfg), on_epoch_end=lambda m: m.epoch == 1, checkpoint=ckpt)  # on the CPU
    on_gpu = train(
        tiny(data_dir, **cfg, **{"runtime.device": "cuda"}), on_epoch_end=lambda m: m.epoch == 2, checkpoint=ckpt
    )
    assert on_gpu.device.startswith("cuda") and on_gpu.resumed_from_epoch == 1 and on_gpu.epochs_run == 2
    back = train(tiny(data_dir, **cfg), checkpoint=ckpt)
    assert back.device == "cpu" and back.resumed_from_epoch == 2 and back.status == "completed"
