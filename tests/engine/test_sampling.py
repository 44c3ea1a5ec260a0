"""Foreground-aware slice sampling: class balance over an epoch, exact resume, determinism, DDP sharding; the 3D knob;
the lr schedules of the quick preset."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch

from _train_helpers import make_trainer, params_of, tiny_config
from resfu_med.engine.sampling import ResumableSampler, foreground_index, foreground_slots, item_labels

# 400 slices: class 1 in 160, class 2 in 12, class 3 in 4 (a rare class), the other 224 empty.
CLASSES = [1] * 160 + [2] * 12 + [3] * 4 + [0] * 224


def _labels(seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(CLASSES))
    out = []
    for i in order:
        lab = np.zeros((8, 8), np.uint8)
        lab[2:4, 2:4] = CLASSES[i]
        out.append(lab)
    return out


def _sampler(labels, *, fg=0.5, batch=4, world=1, rank=0, seed=7):
    index = foreground_index(labels)
    return ResumableSampler(list(range(len(labels))), num_replicas=world, rank=rank, seed=seed, fg_oversample=fg,
                            fg_index=index, batch_size=batch)


def test_foreground_index_and_slots():
    labels = [np.array([[0, 2]]), np.zeros((1, 2)), np.array([[1, 2]])]
    assert foreground_index(labels) == {1: [2], 2: [0, 2]}
    assert [foreground_slots(4, f) for f in (0.0, 0.1, 0.33, 0.5, 1.0)] == [0, 1, 1, 2, 4]
    with pytest.raises(ValueError, match="fg_oversample"):
        foreground_slots(4, 1.5)
    with pytest.raises(ValueError, match="fg_index"):
        ResumableSampler(list(range(3)), fg_oversample=0.5, batch_size=2)


def test_class_balance_counted_over_an_epoch():
    labels = _labels()
    sampler = _sampler(labels, fg=0.5, batch=4)
    sampler.set_epoch(0)
    drawn = [idx for idx, _ in sampler]
    assert len(drawn) == len(labels)  # the epoch length does not change
    fg_positions = [p for p in range(len(drawn)) if p % 4 >= 2]  # the last round(0.5 * 4) = 2 slots of each batch
    fg_classes = Counter(int(labels[drawn[p]].max()) for p in fg_positions)
    # every foreground draw holds a class, and the class is uniform over {1, 2, 3}: 200 draws, ~66.7 each
    assert sum(fg_classes.values()) == 200 and set(fg_classes) == {1, 2, 3}
    for c in (1, 2, 3):
        assert abs(fg_classes[c] - 200 / 3) < 20, fg_classes
    # uniform sampling alone would show the rare class ~2 times in an epoch; with oversampling it is ~67 + that
    uniform = Counter(int(labels[drawn[p]].max()) for p in range(len(drawn)) if p % 4 < 2)
    assert uniform[3] < 10 and fg_classes[3] > 45
    # fg_oversample 0 is today's sampler: a permutation of the items
    plain = _sampler(labels, fg=0.0)
    plain.set_epoch(0)
    assert sorted(idx for idx, _ in plain) == list(range(len(labels)))


def test_deterministic_and_resumable_mid_epoch():
    labels = _labels()
    a, b = _sampler(labels), _sampler(labels)
    a.set_epoch(3)
    b.set_epoch(3)
    full = list(a)
    assert full == list(b)
    b.set_start(37)  # a run stopped after 37 samples of epoch 3 resumes with exactly the rest
    assert list(b) == full[37:]
    a.set_epoch(4)
    assert list(a) != full  # a new epoch, new draws


def test_ddp_shards_interleave_into_the_single_process_epoch():
    labels = _labels()
    single = _sampler(labels, batch=8)
    single.set_epoch(1)
    expected = list(single)
    ranks = []
    for rank in (0, 1):
        s = _sampler(labels, batch=8, world=2, rank=rank)
        s.set_epoch(1)
        ranks.append(list(s))
    merged = [ranks[p % 2][p // 2] for p in range(len(expected))]
    assert merged == expected  # same slices, same seeds, whichever rank draws them


def test_item_labels_reads_the_dataset_without_augmentation():
    from monai.data import Dataset

    labels = _labels()[:5]
    ds = Dataset([{"image": np.zeros((1, 8, 8), np.float32), "label": lab[None]} for lab in labels])
    got = list(item_labels(ds))
    assert all(np.array_equal(g[0], lab) for g, lab in zip(got, labels))


def test_trainer_with_fg_oversample_resumes_exactly(tmp_path):
    cfg = tiny_config(epochs=2, eval=False, fg_oversample=0.5)
    straight = make_trainer(cfg, tmp_path / "a")
    assert straight.sampler.fg_slots == 2 and set(straight.sampler.fg_index) == {1, 2}
    straight.fit()
    stop = copy.deepcopy(cfg)
    stop["train"]["max_iters"] = 7  # stops mid-epoch 2 (5 iterations per epoch)
    make_trainer(stop, tmp_path / "b").fit()
    make_trainer(stop, tmp_path / "b", resume=True, runtime={"train.max_iters": None}).fit()
    ref, got = params_of(tmp_path / "a" / "last.pt"), params_of(tmp_path / "b" / "last.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "poly"])
def test_warmup_schedules(tmp_path, schedule):
    cfg = tiny_config(epochs=2, eval=False, schedule=schedule, warmup_iters=4, lr=0.1)
    trainer = make_trainer(cfg, tmp_path)
    lrs = []
    for _ in range(10):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # linear warm-up over 4 iterations
    after = {"constant": 0.1, "cosine": 0.05 * (1 + np.cos(np.pi * 3 / 6)), "poly": 0.1 * (1 - 3 / 6) ** 0.9}
    assert lrs[7] == pytest.approx(after[schedule])  # 3 of the 6 post-warm-up iterations done


def test_constant_decay_schedule(tmp_path):
    # 10 iterations, warm-up 4, decay over the last 30 % (3 iterations) linearly to 0: hand-computed lrs.
    cfg = tiny_config(epochs=2, eval=False, schedule="constant-decay", warmup_iters=4, decay_fraction=0.3, lr=0.1)
    trainer = make_trainer(cfg, tmp_path)
    assert trainer.max_iterations == 10
    lrs = []
    for _ in range(10):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1 * 2 / 3, 0.1 / 3])


def test_patch_crops_class_balanced():
    from resfu_med.data import get_patch_transforms

    label = np.zeros((16, 32, 32), np.uint8)
    label[6:8, 10:12, 10:12] = 3  # a tiny class (away from the borders, where crops would shift)
    label[8:12, 18:28, 18:28] = 1  # a large one
    image = np.random.default_rng(0).random(label.shape).astype(np.float32) + 0.1
    xform = get_patch_transforms("train", (8, 8, 8), num_samples=60, fg_oversample=1.0, num_classes=4, seed=0)
    centres = Counter(int(p["label"][0, 4, 4, 4]) for p in xform({"image": image, "label": label}))
    assert set(centres) <= {1, 3} and centres[3] > 15 and centres[1] > 15  # both present classes, ~half each
    with pytest.raises(ValueError, match="num_classes"):
        get_patch_transforms("train", (8, 8, 8), fg_oversample=0.5)
