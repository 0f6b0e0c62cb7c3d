"""Which waiting request the worker runs next: group by adapter, but owe FIFO at most ``max_wait_s``.

What this is for
----------------
The engine has one worker thread that owns the SDXL pipeline. Swapping the LoRA adapter on it costs
real time, so when a burst alternates adapters (A B A B ...) it pays to run the requests for the
adapter that is already loaded first (LoRAX does the same for LLMs). This module is the queue's
state machine and nothing else: :class:`SchedulerState` holds the waiting requests and decides, at
each call of :meth:`SchedulerState.pop`, which one the worker runs next. It is modelled on
text-generation-inference's queue ``State``: a private, unit-tested object behind the engine's thin
handle.

What it is not for
------------------
No I/O, no threads, no locks, no clock, no torch. The engine wraps it in its own lock and condition
variable; every method that needs the time takes ``now`` (the caller's ``time.monotonic()``, which
must not run backwards between calls), so tests drive it with made-up times. It does not know what a
payload is, how long a run takes, or whether an adapter can be loaded: that is the engine's business.

Policy
------
Requests are numbered in arrival (``push``) order, ``Ticket.seq``; "older" means pushed earlier. A
*dispatch decision* is one ``pop(loaded_adapter, now)`` that returns a request. At each decision
plain FIFO would take the oldest waiting request, the *head* H. The policy takes instead the oldest
waiting request for ``loaded_adapter`` when all of these hold:

* grouping is on (``group_by_adapter`` and ``max_wait_s > 0``) and ``loaded_adapter`` is not None,
* ``loaded_adapter`` has a waiting request and H is for another adapter,
* H has not yet been overtaken for ``max_wait_s``: ``now - t_H < max_wait_s`` (see below; for an H
  that was never overtaken ``t_H`` counts as ``now``, so this holds iff ``max_wait_s > 0``).

Otherwise it takes H. In particular, when the loaded adapter has no waiting request the worker
switches to the adapter of the oldest waiting request, so the order in which adapter groups get the
pipeline is FIFO too. ``""`` (the base model, no adapter) is a key like any other.

A request R is *overtaken* at the first decision that dispatches a request younger than R while R
waits; ``t_R`` is that decision's ``now``. Up to ``t_R`` everything dispatched ahead of R is older
than R, so FIFO would have run it before R as well: ``t_R`` is the moment FIFO order is first broken
against R, and time after it is the only time R can lose to grouping. Whatever overtakes R also
overtakes every older waiting request, so ``t`` never decreases from older to younger waiting
requests; the head has the earliest one, which is why checking only H above is enough.

Guarantee
---------
For every request R that is overtaken (one never overtaken is never delayed by a younger request):

(G1) Decisions. Every request younger than R that starts before R was dispatched by a decision made
     at ``now < t_R + max_wait_s``. At every decision made at ``now >= t_R + max_wait_s`` while R
     waits, the head is older than or equal to R and has been overtaken for at least ``max_wait_s``,
     so ``pop`` returns the head: from then on only requests older than R (which FIFO owes a slot
     before R anyway) start ahead of it, one per decision, and then R.

(G2) Time. A run cannot be pre-empted, so the run in progress at ``t_R + max_wait_s`` finishes
     first. Hence the worker time spent on requests younger than R before R starts is at most
     ``max_wait_s + S``, where S is the longest single run (decision to next decision, adapter
     swap included). For a work-conserving worker (it calls ``pop`` as soon as it is free while the
     queue is not empty) whose run durations do not depend on the order, this reads:
     ``start(R) <= start_FIFO(R) + max_wait_s + S``, where ``start_FIFO(R)`` is when R would have
     started under plain FIFO with the same arrivals. (The worker is busy from R's arrival until R
     starts; the only work in that interval that FIFO would not also have done first is the younger
     requests' work.)

(G3) ``max_wait_s == 0`` or ``group_by_adapter=False``: exact FIFO; every ``Dispatch.fifo_rank`` is 0.

When several requests are overtaken, each is measured from its own ``t_R``, and those overtaken by
the same decision share it. Once the oldest is due, the due ones run oldest first without
regrouping: a younger request for the adapter just loaded does not jump the others that are due. The runs of older
overtaken requests between R's deadline and R's start are not
charged to R's bound: FIFO would have run them before R as well. (G2)'s comparison with FIFO
assumes order-independent run times; with real swap costs FIFO would swap more, not less.

Cancelling a request only removes work ahead of others; it never moves anyone's ``t_R``. The bound
says nothing about time the worker spends not calling ``pop`` (paused, crashed, shutting down).

Cost, for A adapters with waiting requests and n waiting requests: ``push`` O(1); ``peek_adapter``
O(A); ``pop`` O(A log n) (the log from bisecting the per-adapter FIFO sub-queues, sorted by ``seq``,
for ``fifo_rank``); ``position`` O(A log n) plus the overtake log (one entry per out-of-order
dispatch since the head was first overtaken); ``cancel`` O(n) at worst (deleting from the middle of
a sub-queue), which is fine for a bounded queue.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lora_engine.errors import ConfigError, QueueFull

__all__ = ["Dispatch", "SchedulerState", "SchedulerStats", "Ticket"]

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Ticket:
    """A waiting request's identity, returned by ``push``; hand it to ``cancel`` or ``position``."""

    #: Arrival order, from 0; FIFO order is ``seq`` order.
    seq: int
    #: The adapter key the request needs; ``""`` is the base model.
    adapter: str
    #: The ``now`` passed to ``push``.
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class Dispatch(Generic[P]):
    """The request ``pop`` chose, with how far it departs from FIFO (for logs and metrics)."""

    ticket: Ticket
    payload: P
    #: How many waiting requests FIFO would have run before this one; 0 = FIFO would have taken it.
    fifo_rank: int
    #: ``now - t_R`` for this request (0.0 if it was never overtaken): an upper bound on how long it
    #: waited because of grouping. The guarantee keeps it under ``max_wait_s`` + one run + the runs
    #: of older requests that FIFO owed a slot anyway.
    waited_beyond_fifo_s: float


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """Counters since the state was made."""

    dispatched: int
    #: Dispatches with ``fifo_rank > 0``: each one is a swap that grouping saved (or deferred).
    dispatched_out_of_order: int
    #: The largest ``Dispatch.waited_beyond_fifo_s`` so far.
    max_overtaken_s: float


@dataclass(eq=False, slots=True)
class _Entry(Generic[P]):
    # eq=False: entries compare by identity, so two requests with equal fields stay distinct.
    ticket: Ticket
    payload: P


@dataclass(frozen=True, slots=True)
class _Overtake:
    # The dispatch of request ``seq`` at ``at`` overtook every request older than it still waiting.
    # Only dispatches that raise the highest dispatched seq are kept, so both fields increase along
    # the deque and ``t_R`` of a waiting R is ``at`` of the first entry with ``seq > R.seq``.
    seq: int
    at: float


def _entry_seq(entry: _Entry[Any]) -> int:
    return entry.ticket.seq


def _overtake_seq(overtake: _Overtake) -> int:
    return overtake.seq


class SchedulerState(Generic[P]):
    """The waiting requests and the dispatch policy described in the module docstring.

    Not thread-safe: the engine calls every method under its own lock.
    """

    def __init__(self, *, max_queue: int, max_wait_s: float, group_by_adapter: bool = True) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        if (
            isinstance(max_wait_s, bool)
            or not isinstance(max_wait_s, (int, float))
            or not math.isfinite(max_wait_s)
            or max_wait_s < 0
        ):
            # Infinite would allow unbounded starvation, which this class exists to prevent.
            raise ConfigError(f"max_wait_s must be a finite number of seconds >= 0, got {max_wait_s!r}")
        self._max_queue = max_queue
        self._max_wait_s = float(max_wait_s)
        # max_wait_s == 0 may not overtake anyone even for an instant, so it is plain FIFO.
        self._grouping = bool(group_by_adapter) and self._max_wait_s > 0
        # One FIFO sub-queue per adapter with waiting requests (empty ones are deleted, so the head
        # search and the rank sums run over adapters that matter only).
        self._queues: dict[str, deque[_Entry[P]]] = {}
        self._waiting: dict[int, _Entry[P]] = {}
        # Invariant: every entry has seq > the head's seq (older ones can no longer matter, since the
        # head only ever moves to younger requests), and the deque is empty when the queue is.
        self._overtakes: deque[_Overtake] = deque()
        self._next_seq = 0
        self._max_dispatched_seq = -1
        self._dispatched = 0
        self._out_of_order = 0
        self._max_overtaken_s = 0.0

    # ------------------------------------------------------------------ mutators

    def push(self, adapter: str, payload: P, now: float) -> Ticket:
        """Queue a request for ``adapter``; raise ``QueueFull`` at once, changing nothing, when full."""
        if len(self._waiting) >= self._max_queue:
            raise QueueFull(self._max_queue)
        ticket = Ticket(seq=self._next_seq, adapter=adapter, enqueued_at=now)
        self._next_seq += 1
        entry = _Entry(ticket, payload)
        self._queues.setdefault(adapter, deque()).append(entry)
        self._waiting[ticket.seq] = entry
        return ticket

    def cancel(self, ticket: Ticket) -> bool:
        """Drop a waiting request (its caller left); False if it is not waiting (ran, or cancelled)."""
        entry = self._waiting.get(ticket.seq)
        if entry is None or entry.ticket != ticket:
            return False
        queue = self._queues[ticket.adapter]
        del queue[bisect_left(queue, ticket.seq, key=_entry_seq)]
        if not queue:
            del self._queues[ticket.adapter]
        del self._waiting[ticket.seq]
        self._prune_overtakes()
        return True

    def pop(self, loaded_adapter: str | None, now: float) -> Dispatch[P] | None:
        """Remove and return the request to run next, or None when nothing waits.

        ``loaded_adapter`` is the adapter active on the pipeline now (``""`` for the bare base model),
        or None when unknown (nothing is preferred then).
        """
        choice = self._choose(loaded_adapter, now)
        if choice is None:
            return None
        entry, head = choice
        seq = entry.ticket.seq
        since = self._overtaken_since(seq)
        waited = max(0.0, now - since) if since is not None else 0.0
        rank = 0 if entry is head else self._count_older(seq)

        queue = self._queues[entry.ticket.adapter]
        # The choice is always the oldest of its adapter (the head is the oldest of its own too).
        assert queue[0] is entry
        queue.popleft()
        if not queue:
            del self._queues[entry.ticket.adapter]
        del self._waiting[seq]
        if seq > self._max_dispatched_seq:
            self._max_dispatched_seq = seq
            self._overtakes.append(_Overtake(seq, now))
        self._prune_overtakes()

        self._dispatched += 1
        if rank:
            self._out_of_order += 1
        self._max_overtaken_s = max(self._max_overtaken_s, waited)
        return Dispatch(ticket=entry.ticket, payload=entry.payload, fifo_rank=rank, waited_beyond_fifo_s=waited)

    # ------------------------------------------------------------------ queries

    def peek_adapter(self, loaded_adapter: str | None, now: float) -> str | None:
        """The adapter ``pop(loaded_adapter, now)`` would dispatch next (to prefetch it); None if empty.

        Compare with ``is None``: ``""`` (the base model) is a valid answer.
        """
        choice = self._choose(loaded_adapter, now)
        return None if choice is None else choice[0].ticket.adapter

    def upcoming_adapters(self, loaded_adapter: str | None, now: float, limit: int) -> list[str]:
        """Up to ``limit`` distinct adapters likely to run next, for prefetching: what ``pop`` picks first,
        then the others in the order of their oldest waiting request (the order groups get the pipeline when
        nothing else arrives). O(A log A)."""
        if limit < 1:
            return []
        first = self.peek_adapter(loaded_adapter, now)
        if first is None:
            return []
        rest = sorted((q[0].ticket.seq, a) for a, q in self._queues.items() if a != first)
        return [first, *(a for _, a in rest)][:limit]

    def position(self, ticket: Ticket, loaded_adapter: str | None, now: float) -> int | None:
        """How many requests run before this one (0 = next), or None if it is not waiting.

        Exact for a dry run: no arrivals or cancellations, every ``pop`` made at ``now``, each with
        the adapter of the previous dispatch loaded. So it is an estimate: as time passes, deadlines
        expire and move overtaken requests forward; new requests for the adapter being run may be
        preferred and move others back (by no more than the guarantee allows).
        """
        entry = self._waiting.get(ticket.seq)
        if entry is None or entry.ticket != ticket:
            return None
        seq = ticket.seq
        if not self._grouping:
            return self._count_older(seq)
        cut = self._expired_cut(now)
        if seq < cut:
            # Among the expired prefix, which is dispatched first and in FIFO order.
            return self._count_older(seq)

        # After the expired prefix the dry run drains the adapter then loaded (the last expired
        # request's, or loaded_adapter if none expired), then each other adapter whole, in the order
        # of their oldest remaining request (each becomes the head in turn).
        n_expired = 0
        last_expired: _Entry[P] | None = None
        oldest_left: dict[str, int] = {}
        left: dict[str, int] = {}
        for adapter, queue in self._queues.items():
            k = bisect_left(queue, cut, key=_entry_seq)
            n_expired += k
            if k and (last_expired is None or queue[k - 1].ticket.seq > last_expired.ticket.seq):
                last_expired = queue[k - 1]
            if k < len(queue):
                oldest_left[adapter] = queue[k].ticket.seq
                left[adapter] = len(queue) - k
        first_group = loaded_adapter if last_expired is None else last_expired.ticket.adapter
        mine = ticket.adapter
        mine_queue = self._queues[mine]
        # Requests of its own adapter that are older and not expired run just before it.
        older_in_group = bisect_left(mine_queue, seq, key=_entry_seq) - (len(mine_queue) - left[mine])
        ahead = n_expired + older_in_group
        if mine == first_group:
            return ahead
        ahead += left.get(first_group, 0) if first_group is not None else 0
        for adapter, oldest in oldest_left.items():
            if adapter != mine and adapter != first_group and oldest < oldest_left[mine]:
                ahead += left[adapter]
        return ahead

    def depth_by_adapter(self) -> dict[str, int]:
        """Waiting requests per adapter key (adapters with none are absent)."""
        return {adapter: len(queue) for adapter, queue in self._queues.items()}

    @property
    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            dispatched=self._dispatched,
            dispatched_out_of_order=self._out_of_order,
            max_overtaken_s=self._max_overtaken_s,
        )

    def __len__(self) -> int:
        return len(self._waiting)

    def __repr__(self) -> str:
        return (
            f"SchedulerState(waiting={len(self)}, by_adapter={self.depth_by_adapter()}, "
            f"max_queue={self._max_queue}, max_wait_s={self._max_wait_s}, grouping={self._grouping})"
        )

    # ------------------------------------------------------------------ internals

    def _head(self) -> _Entry[P] | None:
        # The oldest waiting request is the oldest of some sub-queue: O(A).
        head: _Entry[P] | None = None
        for queue in self._queues.values():
            if head is None or queue[0].ticket.seq < head.ticket.seq:
                head = queue[0]
        return head

    def _choose(self, loaded_adapter: str | None, now: float) -> tuple[_Entry[P], _Entry[P]] | None:
        """(the entry to dispatch, the head); pure, so ``peek_adapter`` and ``pop`` always agree."""
        head = self._head()
        if head is None:
            return None
        if not self._grouping or loaded_adapter is None or loaded_adapter == head.ticket.adapter:
            return head, head
        queue = self._queues.get(loaded_adapter)
        if queue is None:
            # Nothing for the loaded adapter: switch to the head's adapter, so groups take turns FIFO.
            return head, head
        # By the invariant the first overtake is the head's; never overtaken, it would be from now.
        since = self._overtakes[0].at if self._overtakes else now
        if now - since >= self._max_wait_s:
            return head, head
        return queue[0], head

    def _overtaken_since(self, seq: int) -> float | None:
        """``t_R`` of the waiting request ``seq``, or None if nothing younger was dispatched yet."""
        i = bisect_right(self._overtakes, seq, key=_overtake_seq)
        return self._overtakes[i].at if i < len(self._overtakes) else None

    def _expired_cut(self, now: float) -> int:
        """Waiting requests with ``seq`` below this have been overtaken for ``max_wait_s`` or more.

        They form a prefix because ``t`` never decreases with ``seq``; the same comparison as
        ``_choose`` so ``position`` agrees with ``pop`` to the last float bit.
        """
        cut = 0
        for overtake in self._overtakes:
            if now - overtake.at < self._max_wait_s:
                break
            cut = overtake.seq
        return cut

    def _count_older(self, seq: int) -> int:
        # Each sub-queue is sorted by seq, so this is a bisect per adapter, not a scan of the queue.
        return sum(bisect_left(queue, seq, key=_entry_seq) for queue in self._queues.values())

    def _prune_overtakes(self) -> None:
        head = self._head()
        if head is None:
            self._overtakes.clear()
            return
        while self._overtakes and self._overtakes[0].seq <= head.ticket.seq:
            self._overtakes.popleft()
