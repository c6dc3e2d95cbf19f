"""The batch planner on its own: keys, solo runs, limits, device classes, groups and size classes."""

from __future__ import annotations

import pytest

from metalic.batching import Group, Queued, Trainer, batch_key, pad_batches, plan_all, plan_batches, plan_groups


def q(key: str, device: str = "auto", solo: bool = False) -> Queued:
    return Queued(key, device, solo)


def test_a_trainer_takes_the_oldest_key_group_up_to_its_limit():
    queue = [q("a"), q("b"), q("a"), q("a"), q("b")]
    (plan,) = plan_batches(queue, [Trainer("cpu", 2)])
    assert plan.runs == (0, 2)  # the oldest task's key, oldest first, at most 2
    plans = plan_batches(queue, [Trainer("cpu", 2), Trainer("cpu", 8)])
    assert [p.runs for p in plans] == [(0, 2), (3,)]  # the second trainer gets what is left of key a
    assert [p.runs for p in plan_batches(queue, [Trainer("cpu", 8)] * 3)] == [(0, 2, 3), (1, 4)]


def test_a_solo_run_goes_alone_and_is_skipped_by_the_others_batches():
    queue = [q("a", solo=True), q("a"), q("a")]
    plans = plan_batches(queue, [Trainer("cpu", 8), Trainer("cpu", 8)])
    assert [p.runs for p in plans] == [(0,), (1, 2)]
    queue = [q("a"), q("a", solo=True), q("a")]
    assert [p.runs for p in plan_batches(queue, [Trainer("cpu", 8)])] == [(0, 2)]


def test_a_trainer_only_takes_runs_of_a_device_class_it_serves():
    queue = [q("g", "cuda"), q("c", "cpu"), q("x", "auto")]
    assert [p.runs for p in plan_batches(queue, [Trainer("cpu", 8)])] == [(1,)]
    plans = plan_batches(queue, [Trainer("cuda", 8), Trainer("cpu", 8), Trainer("cpu", 8)])
    assert [(p.trainer, p.runs) for p in plans] == [(0, (0,)), (1, (1,)), (2, (2,))]
    assert plan_batches([q("g", "cuda")], [Trainer("cpu", 8)]) == []


def test_plan_all_packs_a_whole_queue_for_one_process():
    queue = [q("a"), q("b"), q("a"), q("a", solo=True), q("b"), q("a")]
    assert plan_all(queue) == [(0, 2, 5), (1, 4), (3,)]
    assert plan_all(queue, max_batch=2) == [(0, 2), (1, 4), (3,), (5,)]
    assert plan_all([]) == []


def test_groups_split_then_single_network_each_at_its_size_class():
    single = [False, True, False, True, True]
    assert plan_groups(single, pad=False) == [Group((0, 2), False, 2), Group((1, 3, 4), True, 3)]
    assert plan_groups(single, pad=True) == [Group((0, 2), False, 2), Group((1, 3, 4), True, 4)]
    assert plan_groups([False] * 5, pad=True) == [Group((0, 1, 2, 3, 4), False, 8)]
    assert plan_groups([True], pad=True) == [Group((0,), True, 1)]


@pytest.mark.parametrize(("compiled", "device", "pad"), [(True, "cuda", True), (True, "cpu", False),
                                                          (False, "cuda", False)])  # fmt: skip
def test_padding_only_for_a_loss_compiled_on_an_accelerator(compiled, device, pad):
    assert pad_batches(compiled, device) is pad


def test_the_batch_key_names_family_profile_and_device():
    assert batch_key("burgers", "a300-l200-c1000-abc", "auto") == "burgers/a300-l200-c1000-abc/auto"
