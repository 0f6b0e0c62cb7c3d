"""Tests for ``lora_engine.scheduler``: the queue state machine alone, with made-up clocks.

Besides small hand-checked cases (in the style of TGI's queue tests), ``simulate`` runs a
deterministic single-worker server on top of ``SchedulerState`` and checks every dispatch decision
against an independent model of the policy, then checks the documented guarantees (G1)-(G3) after
the run, including against a plain-FIFO server fed the same arrivals.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from lora_engine.errors import ConfigError, QueueFull
from lora_engine.scheduler import Dispatch, SchedulerState, SchedulerStats, Ticket

pytestmark = pytest.mark.pure

EPS = 1e-9


def drain(state: SchedulerState, loaded: str | None, now: float = 0.0) -> list[Dispatch]:
    """Pop everything at ``now``, loading each dispatched request's adapter as the engine would."""
    out = []
    while (d := state.pop(loaded, now)) is not None:
        out.append(d)
        loaded = d.ticket.adapter
    return out


def dry_run_order(state: SchedulerState, loaded: str | None, now: float) -> list[int]:
    return [d.ticket.seq for d in drain(copy.deepcopy(state), loaded, now)]


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class Arrival:
    at: float
    adapter: str


@dataclass(frozen=True)
class Run:
    seq: int
    adapter: str
    start: float
    duration: float
    dispatch: Dispatch


@dataclass
class SimResult:
    runs: list[Run]
    tickets: list[Ticket]  # by arrival index
    cancelled: set[int] = field(default_factory=set)  # seqs cancelled while waiting
    overtaken_at: dict[int, float] = field(default_factory=dict)  # reference t_R, from the run log

    def by_seq(self) -> dict[int, Run]:
        return {r.seq: r for r in self.runs}


RunTime = Callable[[Ticket, "str | None"], float]


def simulate(
    arrivals: Sequence[Arrival],
    *,
    max_wait_s: float,
    run_time: RunTime,
    group: bool = True,
    loaded: str | None = None,
    cancels: Sequence[tuple[float, int]] = (),
    check_position: bool = False,
) -> SimResult:
    """One worker that pops as soon as it is free (work-conserving) and cannot be pre-empted.

    ``arrivals`` must be sorted by time; ``cancels`` are (time, arrival index). At equal times
    arrivals come first, then cancellations, then the dispatch decision. Every decision is checked
    against a model of the policy written from the docstring, not from the implementation.
    """
    assert all(x.at <= y.at for x, y in zip(arrivals, arrivals[1:]))  # so arrival index == seq
    state: SchedulerState[int] = SchedulerState(
        max_queue=max(1, len(arrivals)), max_wait_s=max_wait_s, group_by_adapter=group
    )
    grouping = group and max_wait_s > 0
    events = sorted(
        [(a.at, 0, i) for i, a in enumerate(arrivals)] + [(at, 1, i) for at, i in cancels],
        key=lambda e: (e[0], e[1]),
    )
    result = SimResult(runs=[], tickets=[])
    waiting: dict[int, Ticket] = {}  # the model's view, by seq
    tickets_by_index: dict[int, Ticket] = {}
    k = 0
    t = 0.0
    while True:
        while k < len(events) and events[k][0] <= t:
            at, kind, i = events[k]
            k += 1
            if kind == 0:
                ticket = state.push(arrivals[i].adapter, i, at)
                assert ticket.enqueued_at == at and ticket.adapter == arrivals[i].adapter
                tickets_by_index[i] = ticket
                result.tickets.append(ticket)
                waiting[ticket.seq] = ticket
            else:
                ticket = tickets_by_index[i]
                was_waiting = ticket.seq in waiting
                assert state.cancel(ticket) is was_waiting
                assert state.cancel(ticket) is False
                if was_waiting:
                    del waiting[ticket.seq]
                    result.cancelled.add(ticket.seq)
        assert len(state) == len(waiting)
        if not waiting:
            if k == len(events):
                break
            t = max(t, events[k][0])
            continue

        # The model: the head, unless grouping prefers the loaded adapter and the head is not due.
        head = min(waiting)
        overtaken = result.overtaken_at
        any_due = any(s in overtaken and t - overtaken[s] >= max_wait_s for s in waiting)
        head_due = t - overtaken.get(head, t) >= max_wait_s
        mine = [s for s, tk in waiting.items() if tk.adapter == loaded]
        expected = head
        if grouping and loaded is not None and mine and waiting[head].adapter != loaded and not head_due:
            expected = min(mine)
        if any_due:  # (G1): a request due makes every decision FIFO
            assert expected == head

        if check_position:
            order = dry_run_order(state, loaded, t)
            assert sorted(order) == sorted(waiting)
            for s, tk in waiting.items():
                assert state.position(tk, loaded, t) == order.index(s)

        peeked = state.peek_adapter(loaded, t)
        d = state.pop(loaded, t)
        assert d is not None
        assert peeked == d.ticket.adapter
        assert d.ticket.seq == expected, (t, loaded, sorted(waiting), overtaken)
        assert d.payload == result.tickets.index(d.ticket)
        assert d.fifo_rank == sum(1 for s in waiting if s < d.ticket.seq)
        assert d.waited_beyond_fifo_s == (t - overtaken[d.ticket.seq] if d.ticket.seq in overtaken else 0.0)
        if not grouping:
            assert d.fifo_rank == 0
        for s in waiting:
            if s < d.ticket.seq:
                overtaken.setdefault(s, t)
        del waiting[d.ticket.seq]

        duration = run_time(d.ticket, loaded)
        assert duration > 0
        result.runs.append(Run(d.ticket.seq, d.ticket.adapter, t, duration, d))
        loaded = d.ticket.adapter
        t += duration

    assert state.pop(loaded, t) is None and state.peek_adapter(loaded, t) is None
    return result


def fifo_starts(arrivals: Sequence[Arrival], service: Sequence[float]) -> list[float]:
    """Start times under plain FIFO, one worker, order-independent run times: the reference."""
    starts, free = [], 0.0
    for a, s in zip(arrivals, service):
        start = max(a.at, free)
        starts.append(start)
        free = start + s
    return starts


def check_guarantee(
    result: SimResult,
    arrivals: Sequence[Arrival],
    max_wait_s: float,
    service: Sequence[float] | None = None,
) -> None:
    """(G1) and (G2) for every request; against a FIFO server too when ``service`` is given."""
    # Every request is dispatched exactly once, unless it was cancelled while waiting.
    seqs = [r.seq for r in result.runs]
    assert len(seqs) == len(set(seqs))
    assert set(seqs) | result.cancelled == {t.seq for t in result.tickets}
    assert not set(seqs) & result.cancelled

    longest = max((r.duration for r in result.runs), default=0.0)
    ref = fifo_starts(arrivals, service) if service is not None else None
    for r in result.runs:
        younger_first = [o for o in result.runs if o.seq > r.seq and o.start < r.start]
        if not younger_first:  # never overtaken: grouping cost it nothing
            assert r.seq not in result.overtaken_at and r.dispatch.waited_beyond_fifo_s == 0.0
            continue
        t_r = result.overtaken_at[r.seq]
        # (G1): younger requests start ahead of R only at decisions in [t_R, t_R + max_wait_s).
        for o in younger_first:
            assert t_r <= o.start < t_r + max_wait_s, (r, o, t_r)
        # (G2): the worker spends at most max_wait_s + one run on them.
        assert sum(o.duration for o in younger_first) <= max_wait_s + longest + EPS
        assert r.dispatch.waited_beyond_fifo_s == r.start - t_r
        if ref is not None:
            assert not result.cancelled
            assert r.start <= ref[r.seq] + max_wait_s + longest + EPS, (r, ref[r.seq])


# --------------------------------------------------------------------------- basics


def test_append():
    state: SchedulerState[str] = SchedulerState(max_queue=10, max_wait_s=5.0)
    assert len(state) == 0 and not state
    assert state.pop("a", 0.0) is None and state.peek_adapter(None, 0.0) is None

    t0 = state.push("owner/a", "p0", 1.0)
    t1 = state.push("", "p1", 2.0)
    t2 = state.push("owner/a", "p2", 2.5)
    assert t0 == Ticket(seq=0, adapter="owner/a", enqueued_at=1.0)
    assert (t1.seq, t1.adapter, t2.seq) == (1, "", 2)
    assert len(state) == 3
    assert state.depth_by_adapter() == {"owner/a": 2, "": 1}
    assert state.stats == SchedulerStats(dispatched=0, dispatched_out_of_order=0, max_overtaken_s=0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_queue": 0, "max_wait_s": 1.0},
        {"max_queue": -1, "max_wait_s": 1.0},
        {"max_queue": 2.5, "max_wait_s": 1.0},
        {"max_queue": True, "max_wait_s": 1.0},
        {"max_queue": 4, "max_wait_s": -0.1},
        {"max_queue": 4, "max_wait_s": float("nan")},
        {"max_queue": 4, "max_wait_s": float("inf")},
        {"max_queue": 4, "max_wait_s": "3"},
    ],
)
def test_invalid_config(kwargs):
    with pytest.raises(ConfigError):
        SchedulerState(**kwargs)


def test_queue_full_raises_at_once_and_changes_nothing():
    state: SchedulerState[int] = SchedulerState(max_queue=2, max_wait_s=5.0)
    state.push("a", 0, 0.0)
    state.push("b", 1, 0.0)
    state.pop("b", 1.0)  # overtakes "a": the deadline state must survive the refusal too
    state.push("b", 2, 1.5)
    before = copy.deepcopy(state)
    for adapter in ("a", "b", "c"):
        with pytest.raises(QueueFull) as info:
            state.push(adapter, 99, 2.0)
        assert info.value.max_queue == 2
    assert len(state) == 2 and state.depth_by_adapter() == before.depth_by_adapter()
    assert state.stats == before.stats
    for now in (2.0, 7.0):
        for loaded in ("a", "b", None):
            assert dry_run_order(state, loaded, now) == dry_run_order(before, loaded, now)
    # The refused pushes consumed no sequence number, and there is room again after a pop.
    state.pop("b", 3.0)
    assert state.push("c", 3, 3.0).seq == 3


# --------------------------------------------------------------------------- FIFO and grouping


@pytest.mark.parametrize("kwargs", [{"max_wait_s": 0.0}, {"max_wait_s": 1e6, "group_by_adapter": False}])
def test_next_batch_fifo_without_grouping(kwargs):
    state: SchedulerState[int] = SchedulerState(max_queue=16, **kwargs)
    for i, adapter in enumerate("ABABCA"):
        state.push(adapter, i, 0.0)
    order = drain(state, "A", 10.0)
    assert [d.ticket.seq for d in order] == [0, 1, 2, 3, 4, 5]
    assert all(d.fifo_rank == 0 and d.waited_beyond_fifo_s == 0.0 for d in order)
    assert state.stats == SchedulerStats(dispatched=6, dispatched_out_of_order=0, max_overtaken_s=0.0)


def test_next_batch_groups_loaded_adapter():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=1000.0)
    for i, adapter in enumerate("ABABAB"):
        state.push(adapter, i, 0.0)
    order = drain(state, "A", 1.0)
    assert "".join(d.ticket.adapter for d in order) == "AAABBB"
    assert [d.ticket.seq for d in order] == [0, 2, 4, 1, 3, 5]
    assert [d.fifo_rank for d in order] == [0, 1, 2, 0, 0, 0]
    assert state.stats.dispatched == 6 and state.stats.dispatched_out_of_order == 2


def test_next_batch_prefers_loaded_even_when_head_is_elsewhere():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=1000.0)
    for i, adapter in enumerate("ABABAB"):
        state.push(adapter, i, 0.0)
    assert [d.ticket.seq for d in drain(state, "B", 1.0)] == [1, 3, 5, 0, 2, 4]


def test_switch_goes_to_the_oldest_requests_adapter():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=1000.0)
    for i, adapter in enumerate("CBCDB"):
        state.push(adapter, i, 0.0)
    # Nothing waits for "A": switch to the head's adapter C, drain it, then B (older than D).
    assert state.peek_adapter("A", 0.0) == "C"
    assert [d.ticket.seq for d in drain(state, "A", 0.0)] == [0, 2, 1, 4, 3]


def test_unknown_loaded_adapter_starts_with_the_head():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=1000.0)
    for i, adapter in enumerate("BAB"):
        state.push(adapter, i, 0.0)
    assert [d.ticket.seq for d in drain(state, None, 0.0)] == [0, 2, 1]


def test_base_model_is_grouped_like_any_adapter():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=1000.0)
    for i, adapter in enumerate(["x/y", "", "x/y", ""]):
        state.push(adapter, i, 0.0)
    assert state.peek_adapter("", 0.0) == ""  # callers must test `is None`, not truthiness
    assert [d.ticket.seq for d in drain(state, "", 0.0)] == [1, 3, 0, 2]


def test_peek_adapter_matches_pop():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=5.0)
    for i, adapter in enumerate("ABCABCAAB"):
        state.push(adapter, i, float(i))
    loaded: str | None = "C"
    now = 9.0
    while len(state):
        peeked = state.peek_adapter(loaded, now)
        assert state.peek_adapter(loaded, now) == peeked  # peeking changes nothing
        d = state.pop(loaded, now)
        assert d is not None and d.ticket.adapter == peeked
        loaded = d.ticket.adapter
        now += 2.0


# --------------------------------------------------------------------------- the wait bound


def test_deadline_forces_fifo_for_the_overtaken_head():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=10.0)
    b = state.push("B", 0, 0.0)
    for i in range(1, 8):
        state.push("A", i, 0.0)
    assert state.pop("A", 0.0).ticket.seq == 1  # overtakes B: t_B = 0
    assert state.pop("A", 5.0).ticket.seq == 2
    assert state.position(b, "A", 9.99) == 5  # not due yet: behind the remaining A requests
    assert state.pop("A", 9.99).ticket.seq == 3
    assert state.position(b, "A", 10.0) == 0
    assert state.peek_adapter("A", 10.0) == "B"
    d = state.pop("A", 10.0)
    assert d.ticket == b and d.fifo_rank == 0 and d.waited_beyond_fifo_s == 10.0
    # B is served; grouping resumes at once for the younger requests.
    assert state.pop("A", 10.0).ticket.seq == 4
    assert state.stats == SchedulerStats(dispatched=5, dispatched_out_of_order=3, max_overtaken_s=10.0)


def test_several_overtaken_are_served_fifo_once_due():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=10.0)
    state.push("B", 0, 0.0)
    state.push("C", 1, 0.0)
    state.push("B", 2, 0.0)
    for i in range(3, 12):
        state.push("A", i, 0.0)
    got = [state.pop("A", t).ticket.seq for t in (0.0, 3.0, 6.0, 9.0)]
    assert got == [3, 4, 5, 6]  # B0, C1, B2 all overtaken at t=0
    # Due at 12: strictly FIFO while the head is due. B0, C1, B2 were all overtaken at 0, so they
    # run in arrival order even though B is loaded after B0 (no regrouping of B2 ahead of C1).
    loaded = "A"
    seqs = []
    for t in (12.0, 15.0, 18.0, 21.0):
        d = state.pop(loaded, t)
        seqs.append(d.ticket.seq)
        loaded = d.ticket.adapter
    assert seqs == [0, 1, 2, 7]


def test_cancelled_overtaken_head_does_not_make_the_next_one_due():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=10.0)
    b1 = state.push("B", 0, 0.0)
    state.push("A", 1, 0.0)
    assert state.pop("A", 0.0).ticket.seq == 1  # t_B1 = 0 (nothing else waits, but B1 was passed)
    b2 = state.push("B", 2, 1.0)
    state.push("A", 3, 1.0)
    assert state.cancel(b1)
    # B2 arrived after the A that overtook B1: it is not overtaken, so it is not due at 50.
    d = state.pop("A", 50.0)
    assert d.ticket.seq == 3 and d.fifo_rank == 1
    d = state.pop("A", 51.0)
    assert d.ticket == b2 and d.waited_beyond_fifo_s == 1.0


def test_adversarial_stream_cannot_starve_another_adapter():
    # "A" requests arrive every second and take 3 s each, so A's queue is never empty while the
    # stream lasts; one "B" request arrives at 0.5. Swaps cost 2 s more.
    arrivals = [Arrival(0.0, "A"), Arrival(0.5, "B")] + [Arrival(float(t), "A") for t in range(1, 300)]

    def run_time(ticket: Ticket, loaded: str | None) -> float:
        return 3.0 + (2.0 if ticket.adapter != loaded else 0.0)

    b_seq = 1
    starved = simulate(arrivals, max_wait_s=1e9, run_time=run_time, loaded="A").by_seq()
    assert max(r.start for r in starved.values()) == starved[b_seq].start  # without a bound: last

    result = simulate(arrivals, max_wait_s=10.0, run_time=run_time, loaded="A")
    check_guarantee(result, arrivals, 10.0)
    b = result.by_seq()[b_seq]
    # Decisions at 0, 3, 6, ...: B is overtaken at 3, due at 13, which falls inside the run started
    # at 12, so it starts at 15 = t_B + max_wait_s + 2 (within the one-run slack of (G2)).
    assert result.overtaken_at[b_seq] == 3.0
    assert b.start == 15.0 <= 3.0 + 10.0 + 5.0
    assert b.dispatch.waited_beyond_fifo_s == 12.0
    # Grouping paid off meanwhile: the only swaps are to B and back.
    swaps = sum(1 for x, y in zip(result.runs, result.runs[1:]) if x.adapter != y.adapter)
    assert swaps == 2

    # Against a FIFO server with order-independent run times: B starts at most max_wait_s + one run late.
    flat = simulate(arrivals, max_wait_s=10.0, run_time=lambda t, loaded: 3.0, loaded="A")
    check_guarantee(flat, arrivals, 10.0, service=[3.0] * len(arrivals))
    assert flat.by_seq()[b_seq].start <= fifo_starts(arrivals, [3.0] * len(arrivals))[b_seq] + 10.0 + 3.0


# --------------------------------------------------------------------------- cancel and position


def test_cancel():
    state: SchedulerState[int] = SchedulerState(max_queue=4, max_wait_s=5.0)
    a0 = state.push("A", 0, 0.0)
    b1 = state.push("B", 1, 0.0)
    a2 = state.push("A", 2, 0.0)
    assert state.cancel(a2) is True
    assert state.cancel(a2) is False
    assert state.depth_by_adapter() == {"A": 1, "B": 1} and len(state) == 2
    assert state.position(a2, "A", 0.0) is None
    # A ticket equal in seq but not in fields is someone else's: refused.
    assert state.cancel(Ticket(seq=1, adapter="A", enqueued_at=0.0)) is False
    assert state.cancel(b1) is True
    assert state.depth_by_adapter() == {"A": 1}
    d = state.pop("B", 1.0)
    assert d.ticket == a0
    assert state.cancel(a0) is False  # already dispatched
    assert state.pop("A", 1.0) is None and len(state) == 0
    # Room freed by cancelling counts for max_queue.
    for i in range(4):
        state.push("C", i, 2.0)
    with pytest.raises(QueueFull):
        state.push("C", 4, 2.0)
    assert state.cancel(Ticket(seq=3, adapter="C", enqueued_at=2.0)) is True
    assert state.push("C", 5, 2.0).seq == 7


def test_position():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=100.0)
    tickets = [state.push(adapter, i, 0.0) for i, adapter in enumerate("ABABAB")]
    assert [state.position(t, "A", 0.0) for t in tickets] == [0, 3, 1, 4, 2, 5]
    assert [state.position(t, None, 0.0) for t in tickets] == [0, 3, 1, 4, 2, 5]
    assert [state.position(t, "B", 0.0) for t in tickets] == [3, 0, 4, 1, 5, 2]
    fifo: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=0.0)
    fifo_tickets = [fifo.push(adapter, i, 0.0) for i, adapter in enumerate("ABABAB")]
    assert [fifo.position(t, "B", 0.0) for t in fifo_tickets] == [0, 1, 2, 3, 4, 5]
    assert state.position(Ticket(seq=99, adapter="A", enqueued_at=0.0), "A", 0.0) is None


def test_position_counts_due_requests_first():
    state: SchedulerState[int] = SchedulerState(max_queue=16, max_wait_s=10.0)
    tickets = [state.push(adapter, i, 0.0) for i, adapter in enumerate("BCAAAAB")]
    state.pop("A", 0.0)  # seq 2: B0 and C1 overtaken at 0
    rest = [t for t in tickets if t.seq != 2]
    # Not due: A first (loaded), then B's group (its oldest is the head), then C.
    assert [state.position(t, "A", 5.0) for t in rest] == [3, 5, 0, 1, 2, 4]
    # Due at 10: B0 and C1 first in FIFO order; then C is loaded (nothing left), so the head's
    # adapter A goes next, then B6.
    assert [state.position(t, "A", 10.0) for t in rest] == [0, 1, 2, 3, 4, 5]
    for now in (5.0, 10.0):
        order = dry_run_order(state, "A", now)
        assert [state.position(t, "A", now) for t in rest] == [order.index(t.seq) for t in rest]


# --------------------------------------------------------------------------- randomized


def random_workload(rng: random.Random) -> list[Arrival]:
    n = rng.randint(1, 40)
    adapters = [""] + [f"owner/lora-{i}" for i in range(rng.randint(0, 4))]
    weights = [rng.random() + 0.05 for _ in adapters]
    pattern = rng.choice(["burst", "poisson", "alternating", "hot", "waves"])
    times: list[float] = []
    if pattern == "burst":
        times = [0.0] * n
    elif pattern == "poisson":
        t = 0.0
        for _ in range(n):
            t += rng.expovariate(rng.choice([0.2, 1.0, 5.0]))
            times.append(t)
    elif pattern == "waves":
        times = sorted(float(rng.randrange(0, 5) * 20) for _ in range(n))
    else:
        step = rng.choice([0.5, 1.0, 2.0])
        times = [float(i) * step for i in range(n)]
    if pattern == "alternating":
        chosen = [adapters[i % len(adapters)] for i in range(n)]
    elif pattern == "hot":  # one adapter floods, the others trickle in
        chosen = [adapters[0] if rng.random() < 0.85 else rng.choice(adapters) for _ in range(n)]
    else:
        chosen = rng.choices(adapters, weights, k=n)
    return [Arrival(t, a) for t, a in zip(times, chosen)]


@pytest.mark.parametrize("seed", range(8))
def test_randomized_every_request_once_and_bound_holds(seed):
    rng = random.Random(seed)
    for trial in range(60):
        arrivals = random_workload(rng)
        max_wait_s = rng.choice([0.0, 0.5, 3.0, 10.0, 50.0, 1e4])
        group = rng.random() < 0.85
        loaded = rng.choice([None, "", "owner/lora-0", "elsewhere"])
        model = rng.choice(["const", "random", "swap"])
        service = [rng.choice([0.5, 1.0, 2.0, 5.0, 13.0]) for _ in arrivals]
        if model == "const":
            service = [2.0] * len(arrivals)

        def run_time(ticket: Ticket, current: str | None, service=service, model=model) -> float:
            swap = 4.0 if model == "swap" and ticket.adapter != current else 0.0
            return service[ticket.seq] + swap

        cancels: list[tuple[float, int]] = []
        if rng.random() < 0.3:
            for i in rng.sample(range(len(arrivals)), k=rng.randint(1, len(arrivals))):
                cancels.append((arrivals[i].at + rng.choice([0.0, 0.3, 4.0, 30.0]), i))

        result = simulate(
            arrivals,
            max_wait_s=max_wait_s,
            run_time=run_time,
            group=group,
            loaded=loaded,
            cancels=cancels,
            check_position=trial < 12,
        )
        comparable = model != "swap" and not cancels
        check_guarantee(result, arrivals, max_wait_s, service=service if comparable else None)
        if max_wait_s == 0 or not group:  # (G3)
            assert [r.seq for r in result.runs] == sorted(r.seq for r in result.runs)


def test_upcoming_adapters_lists_what_pop_takes_first_then_oldest_groups():
    state = SchedulerState(max_queue=10, max_wait_s=5.0)
    for i, adapter in enumerate(["b", "a", "c", "a", "", "d"]):
        state.push(adapter, i, now=float(i))
    assert state.upcoming_adapters("a", now=6.0, limit=10) == ["a", "b", "c", "", "d"]
    assert state.upcoming_adapters("a", now=6.0, limit=2) == ["a", "b"]
    assert state.upcoming_adapters(None, now=6.0, limit=3) == ["b", "a", "c"]
    assert state.upcoming_adapters("a", now=6.0, limit=0) == []
    assert SchedulerState(max_queue=1, max_wait_s=1.0).upcoming_adapters("a", now=0.0, limit=3) == []
