"""The one placement rule, and the queue's queue built on it."""

from __future__ import annotations

from vaegrid.run.pool import ANY_KIND, Pool, may_run
from vaegrid.run.queue import TrialQueue

CPU, GPU = "cpu / torch 2", "NVIDIA H200 / torch 2"


def test_a_started_trial_runs_only_on_its_kind_or_on_a_slot_that_checks_itself() -> None:
    assert may_run(None, CPU) and may_run(None, GPU) and may_run(None, ANY_KIND)
    assert may_run(CPU, CPU) and not may_run(CPU, GPU)
    assert may_run(CPU, ANY_KIND) and may_run(GPU, ANY_KIND)  # a cluster worker checks it


def test_the_scheduler_queues_places_and_strands_by_the_rule() -> None:
    local = Pool(("cpu",), 2, 1, (CPU,))
    queue = TrialQueue(local, {"b": GPU, "c": CPU})
    for key in "abc":
        queue.offer(key)
    queue.offer("d", front=True)
    assert list(queue.order) == ["d", "a", "c"] and queue.stranded == ["b"]
    assert queue.take(CPU) == "d" and queue.take(GPU) == "a"  # a: not started
    assert queue.take(GPU) is None and list(queue.order) == ["c"]
    (line,) = queue.strands()
    assert line == (
        f"1 trials started on {GPU} and only continue on that kind of device; this pool has "
        f"{CPU}: run again with --devices naming such a device"
    )


def test_the_queue_gives_the_most_work_left_first_after_the_trials_put_back() -> None:
    # Longest first (cost.py's work left, as offered), ties by key; a trial put back
    # after an interruption before them all; a slot skips what it may not run.
    local = Pool(("cpu",), 2, 1, (CPU,))
    work = {"a": 1.0, "b": 5.0, "c": 5.0, "d": 3.0, "e": 0.5, "f": 9.0}
    queue = TrialQueue(local, {"f": GPU}, cost=work.__getitem__)
    for key in "abcd":
        queue.offer(key)
    queue.offer("e", front=True)
    assert queue.order == ["e", "b", "c", "d", "a"]
    assert [queue.take(CPU) for _ in range(3)] == ["e", "b", "c"]
    queue.offer("c")  # back in line by its work
    assert queue.order == ["c", "d", "a"]
    cluster = TrialQueue(Pool(("cluster",), 4, 1, (ANY_KIND,), remedy=""), {"f": GPU},
                        cost=work.__getitem__)  # fmt: skip
    for key in "af":
        cluster.offer(key)
    assert cluster.take(CPU) == "a" and cluster.take(GPU) == "f"  # f started on a GPU


def test_a_cluster_pool_strands_nothing_and_never_suggests_devices() -> None:
    cluster = Pool(("cluster",), 4, 1, (ANY_KIND,), remedy="")
    queue = TrialQueue(cluster, {"a": CPU, "b": GPU})
    for key in "abc":
        queue.offer(key)
    assert queue.stranded == [] and queue.strands() == []
    assert [queue.take(ANY_KIND) for _ in range(3)] == ["a", "b", "c"]
    queue.bind("a", CPU)
    queue.stranded.append("a")  # as if stranded: the message names no --devices
    assert "--devices" not in queue.strands()[0]


def test_a_freed_slot_goes_to_the_first_trial_sent_ahead_and_its_place_is_what_is_free() -> None:
    pool = Pool(("cluster",), 2, 1, (ANY_KIND,), remedy="", ahead=2)
    queue = TrialQueue(pool, {})
    slots = pool.slot_list()
    assert pool.slots == 2 and [s.index for s in slots] == [0, 1, 2, 3]  # 2 places ahead
    running = {"fa": ("a", slots[0]), "fb": ("b", slots[1]), "fc": ("c", slots[2]),
               "fd": ("d", slots[3])}  # fmt: skip
    running.pop("fb")  # b ended on slot 1: c, sent first of those ahead, starts there
    assert queue.hand_over(slots[1], running) == (slots[2], "c")
    assert running["fc"] == ("c", slots[1]) and running["fd"] == ("d", slots[3])
    running.pop("fd")  # d ended before the driver moved it (Dask started it elsewhere)
    assert queue.hand_over(slots[3], running) == (slots[3], None)
    running.pop("fa")
    assert queue.hand_over(slots[0], running) == (slots[0], None)  # none waits ahead
    local = Pool(("cpu",), 2, 1, ("cpu-x",))  # vaegrid's own processes: nothing ahead
    assert [s.index for s in local.slot_list()] == [0, 1]
