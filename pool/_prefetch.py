"""Prefetch's budget and the withdrawal decisions: when the calls waiting in a busy worker's
pipe are asked back, which ones, and which call a confirmation is about. Pure functions of the
scheduler's records.

The dispatcher (``pool._dispatch``) acts on these answers: it sends the RUNs and WITHDRAWs,
arms the WITHDRAW deadlines and requeues what comes back. Which busy pipe takes one more call
stays inline in ``Dispatcher._prefetch`` (it runs on every submission and result; a call per
worker there costs about 10% of the scheduler's hot path).
"""

from __future__ import annotations

from pool._calls_state import Call, CallState, WorkerSlot, WorkerState

# How much work (in seconds of the activity's average run time) prefetch keeps queued in each
# busy worker's pipe: enough that a worker finishing a short call finds the next one waiting,
# little enough that a newly idle worker rarely watches calls wait behind a busy one.
PREFETCH_HORIZON = 0.002

# A call prefetched behind a running attempt is taken back (WITHDRAW) when another worker is
# idle and that attempt has run this long: so long that it is no longer the few ms of work that
# prefetch budgets for. No call is prefetched behind an attempt that has run this long either.
WITHDRAW_AFTER = 0.005


def withdraw_due(slot: WorkerSlot) -> float | None:
    """When the calls waiting in ``slot``'s pipe are to be asked back if a worker is idle
    (None: nothing waits behind a running attempt there)."""
    running = slot.running
    if slot.state is not WorkerState.BUSY or running is None or not slot.sent:
        return None
    return running.started_at + WITHDRAW_AFTER


def to_withdraw(slot: WorkerSlot) -> list[int]:
    """The seqs to ask back from ``slot``'s pipe, marked as asked. Each stays in ``slot.sent``
    until the worker confirms (WITHDRAWN) or, having started it already, answers it."""
    seqs = []
    for call in slot.sent:
        if not call.withdrawing and call.state is CallState.SENT:
            call.withdrawing = True
            seqs.append(call.seq)
    return seqs


def take_back(slot: WorkerSlot, seq: int) -> tuple[Call, bool] | None:
    """The worker confirmed it dropped RUN ``seq`` unstarted: the call, out of ``slot.sent``,
    and whether it had already been promoted to the running attempt (its predecessor's reply
    came first). None: ``seq`` is not in this worker's pipe any more."""
    running = slot.running
    if running is not None and running.seq == seq:
        return running, True
    for call in slot.sent:
        if call.seq == seq:
            slot.sent.remove(call)
            return call, False
    return None
