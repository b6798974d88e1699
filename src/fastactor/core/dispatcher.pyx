# The dispatcher: one mailbox per instance, one turn at a time, turns driven eagerly, the
# output gate, eviction and checkpoints of one shard. Included by _core.pyx.
#
# A call reaches Shard.call. If the instance is idle the turn starts at once, inside the
# caller's stack: the method's coroutine is driven with send() and, as long as it only
# awaits storage (which never suspends), it runs to the end with no trip through the event
# loop. Only when user code really suspends (a sleep, a network call, another instance) is
# the rest handed to an asyncio Task. When the turn ends its writes are appended to the log
# as one record, the instance may start its next turn right away, and the reply waits in the
# log's release queue until the record (or, for a turn that wrote nothing, the instance's last
# record) is durable: the output gate.
#
# A call made inside a turn carries its call chain: a link for each turn it comes through,
# (shard origin, turn serial, index of the turn's outgoing call, type, name), also across
# workers (channel.pyx). A call queued behind a turn that is in its chain and awaits the very
# call of its link can never start: it fails with ActorDeadlockError, at once or as soon as
# that turn suspends on it, rather than wait out the method's budget. A turn that made the
# call without awaiting it (fire and forget) is not waiting on it: the call just queues.

cdef enum TurnKind:
    KIND_CALL = 0
    KIND_FETCH = 1
    KIND_BLOCK = 2
    KIND_ALARM = 3

cdef object _MISSING = object()
cdef Py_ssize_t MAX_NAME_BYTES = 2048       # an instance name's length at most, in UTF-8
cdef object _enter_task = asyncio.tasks._enter_task
cdef object _leave_task = asyncio.tasks._leave_task
cdef object _swap_current_task = getattr(asyncio.tasks, "_swap_current_task", None)
cdef object _current_task = asyncio.current_task
# CPython's map of running loop -> current task, which current_task() reads up to 3.13: a
# turn's first step swaps its entry in place (two dict stores, against four calls of
# _enter_task and _leave_task). From 3.14 the current task lives in the thread state and
# asyncio.tasks keeps the map only for its pure-Python current_task, so a store there would
# change nothing: the map is used only where it is the one current_task reads, else
# _swap_current_task (3.12+) or the _enter_task and _leave_task calls.
cdef object _current_tasks = getattr(asyncio.tasks, "_current_tasks", None)


cdef bint _map_is_read():
    try:
        import _asyncio
    except ImportError:
        _asyncio = None
    if asyncio.tasks.current_task is getattr(asyncio.tasks, "_py_current_task", None):
        return True
    return _asyncio is not None and getattr(_asyncio, "_current_tasks", None) is _current_tasks


cdef bint _swap_in_place = type(_current_tasks) is dict and _map_is_read()
# What a turn may await its calls through, for deadlock detection: Tasks (their _fut_waiter)
# and the end of a TaskGroup's block (its _on_completed_fut).
cdef object _Task = asyncio.Task
cdef object _TaskGroup = getattr(asyncio, "TaskGroup", None)
# What asyncio.gather returns (its _children are what it waits on), for deadlock detection.
cdef object _GatheringFuture = getattr(asyncio.tasks, "_GatheringFuture", None)
# What asyncio.wait_for awaits on Python 3.11 is a waiter the awaited future's done callback
# (a partial of this) releases; from 3.12 it awaits the future itself.
cdef object _release_waiter = getattr(asyncio.tasks, "_release_waiter", None)
# What asyncio.wait awaits is a waiter that a closure of asyncio.tasks._wait, added as a done
# callback to each future waited on, releases: this is that closure's code.
cdef object _wait_callback():
    code = getattr(getattr(asyncio.tasks, "_wait", None), "__code__", None)
    for c in getattr(code, "co_consts", ()):
        if (type(c) is types.CodeType and c.co_name == "_on_completion"
                and {"counter", "return_when", "waiter"} <= set(c.co_freevars)):
            return c
    return None

cdef object _wait_callback_code = _wait_callback()


cdef object _shield_callback():
    """The code of the done callback asyncio.shield adds to what it shields: it settles the
    future (``outer``) that shield returned."""
    code = getattr(getattr(asyncio.tasks, "shield", None), "__code__", None)
    for c in getattr(code, "co_consts", ()):
        if (type(c) is types.CodeType and c.co_name == "_inner_done_callback"
                and "outer" in c.co_freevars):
            return c
    return None

cdef object _shield_callback_code = _shield_callback()

cdef object _record_encode = msgspec.msgpack.Encoder().encode
cdef object _record_decode = msgspec.msgpack.Decoder().decode
cdef frozenset _NOT_RPC = frozenset({"fetch", "alarm"})
cdef frozenset _STUB_OWN = frozenset({"id", "fetch"})


cdef object _swap_task(object loop, object task):
    """Makes TASK asyncio's current task on LOOP; returns the one it replaced (or None)."""
    if _swap_in_place:
        prev = (<dict>_current_tasks).get(loop)
        (<dict>_current_tasks)[loop] = task
        return prev
    if _swap_current_task is not None:
        return _swap_current_task(loop, task)
    prev = _current_task(loop)
    if prev is not None:
        _leave_task(loop, prev)
    _enter_task(loop, task)
    return prev


cdef void _restore_task(object loop, object task, object prev) except *:
    """Undoes _swap_task(LOOP, TASK), which returned PREV."""
    if _swap_in_place:
        if prev is None:
            del (<dict>_current_tasks)[loop]
        else:
            (<dict>_current_tasks)[loop] = prev
    elif _swap_current_task is not None:
        _swap_current_task(loop, prev)
    else:
        _leave_task(loop, task)
        if prev is not None:
            _enter_task(loop, prev)


async def _await_it(awaitable):
    return await awaitable


class CallFuture(asyncio.Future):
    """The reply of a stub call (``stub.method(...)``, ``stub.fetch(request)``): an asyncio
    Future, to await, gather, hand to wait_for or shield, that asyncio.create_task and a
    TaskGroup's create_task take as well, as they take the coroutine an ``async def`` call
    returns (so asyncio.wait, which refuses coroutines, wants it in a Task too). The call is
    made when the stub is called, not when its reply is awaited. send and throw step it the
    way ``await`` does."""

    __slots__ = ()
    __name__ = property(lambda self: "stub call")  # what the repr of a Task carrying it says

    def send(self, value):
        return _future_await(self).send(value)

    def throw(self, *exc):
        return _future_await(self).throw(*exc)

    def close(self):
        pass


cdef object _future_await = asyncio.Future.__await__


def _task_stack(coro, limit):
    """What Task.get_stack gives for a task running CORO: its frame and those below it, the
    oldest first, at most LIMIT of the newest; none once it is done."""
    f = getattr(coro, "cr_frame", None)
    if f is None:
        f = getattr(coro, "gi_frame", None)
    frames = []
    while f is not None and (limit is None or len(frames) < limit):
        frames.append(f)
        f = f.f_back
    frames.reverse()
    return frames


cdef object _Cancelled = asyncio.CancelledError
cdef object _InvalidState = asyncio.InvalidStateError


cdef class _TaskBase:
    """What a turn's and a fetch's stand-ins for an asyncio Task share (_TurnTask,
    _FetchTask): the loop, the coroutine, the context, the stack, and the outcome with the
    done callbacks waiting for it (result, exception, add_done_callback as on a Task)."""

    cdef object loop
    cdef object coro
    cdef object context              # the copy of its caller's context it runs in
    cdef object __weakref__          # libraries keep per-task state in weak maps (anyio)
    cdef bint finished               # its coroutine ended (here, not in a Task carrying it)
    cdef object outcome              # what the coroutine returned
    cdef object failure              # or the exception that ended it
    cdef list callbacks              # [(fn, context)] waiting for the end, or None

    cdef void _finish(self, object outcome, object failure) except *:
        cdef list cbs = self.callbacks
        self.finished = True
        self.outcome = outcome
        self.failure = failure
        if cbs is not None:
            self.callbacks = None
            for fn, ctx in cbs:
                self.loop.call_soon(fn, self, context=ctx)

    def add_done_callback(self, fn, *, context=None):
        if self.finished:
            self.loop.call_soon(fn, self, context=context)
            return
        if self.callbacks is None:
            self.callbacks = []
        self.callbacks.append((fn, context))

    def remove_done_callback(self, fn):
        if not self.callbacks:
            return 0
        kept = [(f, c) for f, c in self.callbacks if f != fn]
        n = len(self.callbacks) - len(kept)
        self.callbacks = kept
        return n

    def done(self):
        return self.finished

    def cancelled(self):
        return self.finished and isinstance(self.failure, _Cancelled)

    def result(self):
        if not self.finished:
            raise _InvalidState("Result is not set.")
        if self.failure is not None:
            raise self.failure
        return self.outcome

    def exception(self):
        if not self.finished:
            raise _InvalidState("Exception is not set.")
        if isinstance(self.failure, _Cancelled):
            raise self.failure
        return self.failure

    def get_loop(self):
        return self.loop

    def get_coro(self):
        return self.coro

    def get_context(self):
        return self.context

    def get_stack(self, *, limit=None):
        return _task_stack(self.coro, limit)

    def print_stack(self, *, limit=None, file=None):
        frames = self.get_stack(limit=limit)
        out = sys.stderr if file is None else file
        print(f"Stack for {self!r} (most recent call last):", file=out)
        traceback.print_list(traceback.StackSummary.extract((f, f.f_lineno) for f in frames),
                             file=out)


@cython.final
@cython.freelist(64)
cdef class _TurnTask(_TaskBase):
    """asyncio's current task for the whole of a turn. The first step runs inside its
    caller's step (no Task is made for a turn that does not suspend); if the turn suspends, a
    Task carries it on, the turn still sees this as its current task (see _continue), and this
    forwards cancellation to that Task. So an ``asyncio.timeout``, TaskGroup or anyio cancel
    scope in a method acts on the method, never its caller."""

    cdef str type_name
    cdef str inst_name
    cdef uint64_t serial             # its turn's (see _Turn.serial)
    cdef object chain                # its turn's call chain: list of links, or None
    cdef _Instance inst
    cdef Py_ssize_t calls            # calls the turn made so far
    cdef object last_call            # the future of the last of them (index calls - 1)
    cdef list earlier                # [index, future] of earlier calls not done, or None
    cdef Py_ssize_t earlier_cap      # pruned of done calls when it grows past this
    cdef object waiting_on           # what the turn awaits while suspended in its Task
    cdef object task                 # the Task carrying the turn after it suspended
    cdef int cancel_requests         # before there is one
    cdef bint must_cancel
    cdef bint hooked                 # the carrying Task calls _carried_done when done
    cdef object alarm_hook           # an alarm run's: the shard's alarm_step_hook, or None
    cdef int alarm_retries           # an alarm run's retries so far

    cdef void carried_by(self, object task) except *:
        self.task = task
        if self.must_cancel:          # after the Task's first step, so the turn sees it
            self.loop.call_soon(task.cancel)
        if self.callbacks:
            self._hook()

    cdef void _hook(self) except *:
        self.hooked = True
        self.task.add_done_callback(self._carried_done)

    def _carried_done(self, task):
        if task.cancelled():
            try:
                task.result()
            except BaseException as e:   # the CancelledError the Task keeps
                self._finish(None, e)
            return
        exc = task.exception()
        self._finish(None if exc is not None else task.result(), exc)

    def add_done_callback(self, fn, *, context=None):
        _TaskBase.add_done_callback(self, fn, context=context)
        if self.task is not None and not self.hooked and self.callbacks:
            self._hook()

    def result(self):
        if self.task is not None:
            return self.task.result()
        return _TaskBase.result(self)

    def exception(self):
        if self.task is not None:
            return self.task.exception()
        return _TaskBase.exception(self)

    def cancel(self, msg=None):
        if self.task is not None:
            return self.task.cancel(msg)
        if self.finished:
            return False
        self.cancel_requests += 1
        self.must_cancel = True
        return True

    def cancelling(self):
        return self.task.cancelling() if self.task is not None else self.cancel_requests

    def uncancel(self):
        if self.task is not None:
            return self.task.uncancel()
        if self.cancel_requests > 0:
            self.cancel_requests -= 1
        if self.cancel_requests == 0:
            self.must_cancel = False
        return self.cancel_requests

    def done(self):
        return self.task.done() if self.task is not None else self.finished

    # Read by libraries that drive cancellation themselves (anyio's cancel scopes), as they
    # read them on an asyncio Task.
    @property
    def _must_cancel(self):
        return self.task._must_cancel if self.task is not None else self.must_cancel

    @property
    def _fut_waiter(self):
        return self.task._fut_waiter if self.task is not None else None

    def cancelled(self):
        if self.task is not None:
            return self.task.cancelled()
        return _TaskBase.cancelled(self)

    def get_name(self):
        return f"turn of {self.type_name} {self.inst_name!r}"

    def __repr__(self):
        return f"<{self.get_name()} {'done' if self.done() else 'pending'}>"


@types.coroutine
def _continue(coro, yielded, tt):
    """The rest of a turn's coroutine after its first real suspension, as a Task's body:
    every value goes through unchanged, so the Task waits on what the coroutine awaits. The
    coroutine runs with TT (its _TurnTask) as the current task, as its first step did: one
    task from its first line to its last (anyio's cancel scopes check that)."""
    loop = (<_TurnTask>tt).loop
    while True:
        exc = None
        (<_TurnTask>tt).waiting_on = yielded
        if (<_TurnTask>tt).inst.turn is not None and (<_TurnTask>tt).inst.turn.suspects:
            _refuse_cycles(<_TurnTask>tt)
            if (<_TurnTask>tt).inst.turn.suspects:
                # Again once the Tasks the turn just started ran their first step: one that
                # awaits a call (create_task(stub.method())) only then waits on it.
                loop.call_soon(_recheck_cycles, tt)
        try:
            sent = yield yielded
        except BaseException as e:
            exc = e
        (<_TurnTask>tt).waiting_on = None
        hook = (<_TurnTask>tt).alarm_hook
        if hook is not None:
            hook((<_TurnTask>tt).inst.key, (<_TurnTask>tt).alarm_retries)
        task = _swap_task(loop, tt)
        try:
            yielded = coro.send(sent) if exc is None else coro.throw(exc)
        except StopIteration as s:
            return s.value
        finally:
            _restore_task(loop, tt, task)
            if hook is not None:
                hook(None, 0)


cdef _TurnTask _calling_turn(object loop):
    """The turn making a call now (asyncio's current task is a turn's _TurnTask for the whole
    of the turn, see _continue), or the running turn that started the Task making it; or
    None."""
    if _swap_in_place:
        tt = (<dict>_current_tasks).get(loop)
    else:
        tt = _current_task(loop)
    if type(tt) is _TurnTask:
        return <_TurnTask>tt
    if tt is None or isinstance(tt, _TaskBase):   # no task, or a function's fetch
        return None
    return _turn_of_caller()


cdef _TurnTask _turn_of_caller():
    """For a call from a Task a turn started (create_task, gather over coroutines, a
    TaskGroup), when the code making it is the actor's (a method, or a function in one that
    uses ``self``): the running turn of that actor's instance; else None. The call then
    carries that turn's chain, and a call back is refused only if that turn awaits it.
    Turns pay nothing for this; other code calling from a Task pays a frame and a set
    lookup."""
    cdef _Instance inst
    cdef PyFrameObject *f = PyEval_GetFrame()
    if f is NULL or PyFrame_GetCode(f) not in _actor_codes:
        return None
    ctx = getattr((<object>f).f_locals.get("self"), "ctx", None)
    if type(ctx) is not ActorContext:
        return None
    inst = (<ActorContext>ctx)._inst
    if inst is None or inst.turn is None:
        return None
    return inst.turn.tt


# The code of every function that actor classes define (and of what those define inside),
# so that _turn_of_caller reads the frame only of a Task running an actor's own code.
cdef set _actor_codes = set()


cdef void _note_actor_codes(object cls) except *:
    todo = []
    for klass in getattr(cls, "__mro__", ()):
        if klass is object or getattr(klass, "__module__", None) == "fastactor.actor":
            continue
        for v in vars(klass).values():
            try:
                code = getattr(getattr(v, "__func__", v), "__code__", None)
            except Exception:       # an attribute that refuses to be looked at: not code
                continue
            if type(code) is types.CodeType:
                todo.append(code)
    while todo:
        code = todo.pop()
        if code not in _actor_codes:
            _actor_codes.add(code)
            todo.extend([c for c in code.co_consts if type(c) is types.CodeType])


cdef list _outgoing_chain(_TurnTask t):
    """The call chain of the call turn T makes next: T's own, and T's link last. Lists, not
    tuples, so that a frame carrying it stays on the codec's fast path."""
    link = [t.inst.shard.origin, t.serial, t.calls, t.type_name, t.inst_name]
    return [link] if t.chain is None else t.chain + [link]


cdef void _made_call(_TurnTask t, object fut) except *:
    """Records FUT as the future of T's call (the one _outgoing_chain just named). The
    previous call moves to t.earlier if it is not done yet (calls in flight together, say for
    a gather); done ones are dropped from there as it grows, so a turn holds no more futures
    than it has calls in flight."""
    cdef list kept
    prev = t.last_call
    if prev is not None and not prev.done():
        if t.earlier is None:
            t.earlier = []
            t.earlier_cap = 8
        elif len(t.earlier) >= t.earlier_cap:
            kept = [e for e in t.earlier if not e[1].done()]
            t.earlier = kept
            t.earlier_cap = max(8, 2 * len(kept))
        t.earlier.append([t.calls - 1, prev])
    t.calls += 1
    t.last_call = fut


cdef bint _awaits_call(_TurnTask tt, object index) except -1:
    """True if TT's turn is suspended on its call number INDEX (see _waits_on)."""
    cdef object fut = None
    w = tt.waiting_on
    if w is None:
        return False
    if index == tt.calls - 1:
        fut = tt.last_call
    elif tt.earlier is not None:
        for e in tt.earlier:
            if e[0] == index:
                fut = e[1]
                break
    if fut is None or fut.done():
        return False
    return _waits_on(w, fut, 0)


cdef bint _waits_on(object w, object fut, int depth) except -1:
    """True if what awaits W cannot go on before FUT is done: W is FUT, an asyncio.gather
    with a child that waits on it, a Task suspended on something that does (a Task the turn
    started), asyncio.wait_for's waiter for it, or an asyncio.wait that cannot end without
    it."""
    if w is fut:
        return True
    if depth >= 16:
        return False
    if type(w) is _GatheringFuture:
        for child in getattr(w, "_children", ()):
            if _waits_on(child, fut, depth + 1):
                return True
    elif isinstance(w, _Task):
        inner = getattr(w, "_fut_waiter", None)
        return inner is not None and _waits_on(inner, fut, depth + 1)
    else:
        return _released_by(w, fut)
    return False


cdef bint _released_by(object w, object fut) except -1:
    """True if the waiter W is released by a done callback of FUT, or of a Task that awaits
    FUT (maybe through other Tasks or asyncio.shield): asyncio.wait_for's on 3.11,
    asyncio.wait's, the end of a TaskGroup's block, asyncio.shield's future."""
    cdef list todo = [fut]
    cdef int seen = 0
    while todo and seen < 16:
        x = todo.pop()
        seen += 1
        for entry in getattr(x, "_callbacks", None) or ():
            cb = entry[0]
            if (type(cb) is functools.partial and (<object>cb).func is _release_waiter
                    and (<object>cb).args and (<object>cb).args[0] is w):
                return True
            if (_wait_callback_code is not None and type(cb) is types.FunctionType
                    and (<object>cb).__code__ is _wait_callback_code and _wait_needs(cb, w)):
                return True
            if (_shield_callback_code is not None and type(cb) is types.FunctionType
                    and (<object>cb).__code__ is _shield_callback_code):
                outer = _cell(cb, "outer")              # asyncio.shield's future settles
                if outer is w:                          # when X does
                    return True
                if outer is not None:
                    todo.append(outer)
                continue
            awaiting = getattr(cb, "__self__", None)   # a Task's wake-up: that Task awaits X
            if isinstance(awaiting, _Task):
                todo.append(awaiting)
            elif (type(awaiting) is _TaskGroup
                    and getattr(awaiting, "_on_completed_fut", None) is w):
                return True                             # a TaskGroup waits for all its Tasks
    return False


cdef object _cell(object fn, str name):
    """What the closure of FN holds for the free variable NAME (None if it holds nothing)."""
    try:
        return fn.__closure__[fn.__code__.co_freevars.index(name)].cell_contents
    except (ValueError, IndexError, TypeError):
        return None


cdef bint _wait_needs(object on_completion, object w) except -1:
    """True if W is the waiter of the asyncio.wait whose done callback ON_COMPLETION is on a
    call's future, and that wait cannot end before the call does (or its timeout, as with
    wait_for): it waits for all of its futures, or the call is the last one it waits for.
    FIRST_COMPLETED and FIRST_EXCEPTION over others may end the wait before the call."""
    cells = dict(zip(on_completion.__code__.co_freevars,
                     [c.cell_contents for c in on_completion.__closure__]))
    if cells.get("waiter") is not w:
        return False
    return cells.get("return_when") == asyncio.ALL_COMPLETED or cells.get("counter", 2) <= 1


cdef Py_ssize_t _cycle_at(_Instance inst, list chain) except -2:
    """Where INST's running turn is in CHAIN, if it is suspended awaiting the call of that
    link (so a call with CHAIN queued behind it could never start); else -1."""
    cdef _Turn t = inst.turn
    cdef _TurnTask tt = t.tt
    cdef Py_ssize_t i
    if tt is None or tt.waiting_on is None:
        return -1
    for i in range(len(chain)):
        link = chain[i]
        if link[1] == t.serial and link[0] == inst.shard.origin:
            return i if _awaits_call(tt, link[2]) else -1
    return -1


cdef bint _in_chain(_Instance inst, list chain) except -1:
    """True if INST's running turn is in CHAIN."""
    cdef uint64_t serial = inst.turn.serial
    for link in chain:
        if link[1] == serial and link[0] == inst.shard.origin:
            return True
    return False


cdef object _deadlock(_Instance inst, list chain, Py_ssize_t i):
    path = " → ".join([f"{l[3]} {l[4]!r}" for l in chain[i:]])
    return ActorDeadlockError(
        f"calling {inst.ns.type_name} {inst.name!r} would wait forever: its running turn is "
        f"waiting on this call ({path} → {inst.ns.type_name} {inst.name!r}), and an instance "
        "takes one call at a time")


def _recheck_cycles(_TurnTask tt):
    """_refuse_cycles for TT's turn, if it still runs and is suspended."""
    if tt.waiting_on is not None and tt.inst.turn is not None and tt.inst.turn.suspects:
        _refuse_cycles(tt)


cdef void _refuse_cycles(_TurnTask tt) except *:
    """TT's turn is about to suspend on tt.waiting_on: fails the calls queued behind it that
    wait on that very call (see _cycle_at)."""
    cdef _Instance inst = tt.inst
    cdef _Call c
    cdef Py_ssize_t i
    if inst.turn.tt is not tt or not inst.mailbox:
        return
    for c in list(inst.mailbox):
        if c.chain is None or c.fut is None:
            continue
        i = _cycle_at(inst, <list>c.chain)
        if i >= 0:
            inst.mailbox.remove(c)
            inst.turn.suspects -= 1
            inst.shard.resolve(c.fut, _deadlock(inst, <list>c.chain, i), True)


@cython.final
@cython.no_gc
@cython.freelist(256)
cdef class _Call:
    cdef int kind
    cdef str method
    cdef object args
    cdef object kwargs
    cdef object fut
    cdef object chain         # the call chain it came with (see _outgoing_chain), or None


@cython.final
@cython.no_gc
@cython.freelist(256)
cdef class _Turn:
    cdef _Instance inst
    cdef _Call call
    cdef uint64_t serial      # the shard's count of turns when it started: its identity
    cdef _TurnTask tt         # its stand-in task, once its coroutine started
    cdef int suspects         # calls queued behind it with it in their chain
    cdef list layers          # write sets, outermost first; None until a transaction opens
    cdef _WriteSet top
    cdef bint poisoned        # a transaction raised: the reply becomes ActorOutputGateError
    cdef bint finished        # the reply is decided
    cdef bint dead            # storage may no longer be used through this turn
    cdef bint alarm_touched   # set_alarm or delete_alarm was called
    cdef object task
    cdef object timer

    cdef object read(self, str key):
        cdef Py_ssize_t i
        cdef _WriteSet ws
        if self.layers is None:
            v = self.top.puts.get(key, _MISSING)
            if v is not _MISSING:
                return v
            if self.top.cleared:
                return _ABSENT
            return self.inst.committed(key)
        for i in range(len(self.layers) - 1, -1, -1):
            ws = <_WriteSet>self.layers[i]
            v = ws.puts.get(key, _MISSING)
            if v is not _MISSING:
                return v
            if ws.cleared:
                return _ABSENT
        return self.inst.committed(key)

    cdef dict list(self, prefix, start, start_after, end, reverse, limit):
        cdef _Instance inst = self.inst
        cdef Shard shard = inst.shard
        cdef list views = []
        cdef _WriteSet ws
        cdef _Layer layer
        cdef Py_ssize_t extra = 0
        cdef bint from_store = True
        if type(limit) is not int or type(limit) is bool:
            raise TypeError("limit must be an int")
        if limit > MAX_LIST_LIMIT:
            raise ValueError(f"list() limit must be at most {MAX_LIST_LIMIT}")
        if limit < 1:
            raise ValueError("list() limit must be at least 1")
        if start is not None and start_after is not None:
            raise ValueError("list() takes start or start_after, not both")
        for name, v in (("prefix", prefix), ("start", start), ("start_after", start_after),
                        ("end", end)):
            if v is not None and type(v) is not str:
                raise TypeError(f"list() {name} must be a str")
        lo = start if start is not None else start_after
        lo_incl = start_after is None
        hi = end
        if prefix:
            if lo is None or lo < prefix:
                lo, lo_incl = prefix, True
            last = ord(prefix[len(prefix) - 1])
            if last < 0x10FFFF:
                upper = prefix[:len(prefix) - 1] + chr(last + 1)
                if hi is None or upper < hi:
                    hi = upper
        # Newest first: the turn's write sets, then the overlay layers; a cleared one hides
        # everything older, the snapshot included.
        layers = self.layers if self.layers is not None else [self.top]
        for i in range(len(layers) - 1, -1, -1):
            ws = <_WriteSet>layers[i]
            views.append(ws.puts)
            extra += len(ws.puts)
            if ws.cleared:
                from_store = False
                break
        if from_store:
            for gen in (shard.dirty, shard.frozen):
                if gen is None:
                    continue
                layer = (<dict>gen).get(inst.key)
                if layer is None:
                    continue
                views.append(layer.puts)
                extra += len(layer.puts)
                if layer.cleared:
                    from_store = False
                    break
        merged = {}
        if from_store:
            # One more than asked: the range may hold the alarm's reserved key.
            for k, v in shard.store.range(inst.key, lo, lo_incl, hi, reverse,
                                          limit + extra + 1):
                merged[k] = v
        for view in reversed(views):
            merged.update(view)
        merged.pop(ALARM_KEY, None)
        keys = [k for k, v in merged.items() if v is not _ABSENT
                and (lo is None or (k >= lo if lo_incl else k > lo))
                and (hi is None or k < hi)
                and (not prefix or k.startswith(prefix))]
        keys.sort(reverse=bool(reverse))
        return {k: decode_value(merged[k]) for k in keys[:limit]}


# What the cache counts (max_cache_bytes bounds it) is the memory its entries hold, as
# CPython lays them out on 64 bits: an encoded value is a bytes object, its length and a
# 33-byte header; each entry adds its key and its slot in the dict (about 30 bytes at a
# dict's usual load), whatever its value, so that keys looked up and found absent, cached as
# _ABSENT, count too. A key is a str: a header of about 49 bytes and a byte a character when
# all are ASCII. Else it holds 1, 2 or 4 bytes a character (its widest character's width),
# 24 bytes more of header, and its UTF-8 form besides, which the log's encoder and sqlite3
# both make and leave in it: counted at its most, 2, 3 or 4 bytes a character, so that an
# entry's count depends on nothing but the key and value.
cdef Py_ssize_t BYTES_HEADER = 33
cdef Py_ssize_t CACHE_ENTRY = 80
cdef Py_ssize_t WIDE_HEADER = 25


cdef inline Py_ssize_t _size(object v) noexcept:
    """What a cached value holds: an encoded value's bytes (0 for _ABSENT, or None)."""
    return PyBytes_GET_SIZE(v) + BYTES_HEADER if PyBytes_CheckExact(v) else 0


cdef inline Py_ssize_t _entry(str key, object v) noexcept:
    """What a cache entry KEY -> V holds."""
    if PyUnicode_IS_ASCII(key):
        return CACHE_ENTRY + len(key) + _size(v)
    cdef Py_ssize_t kind = PyUnicode_KIND(key)
    return CACHE_ENTRY + WIDE_HEADER + len(key) * (2 * kind + (kind < 4)) + _size(v)


@cython.final
cdef class _Instance:
    cdef readonly str key          # "<type>\0<name>"
    cdef readonly str name
    cdef Shard shard
    cdef ActorNamespace ns
    cdef object actor
    cdef ActorContext ctx
    cdef dict cache                # key -> bytes | _ABSENT, committed state
    cdef Py_ssize_t cache_bytes    # what the cache's entries hold (the shard sums them)
    cdef _Turn turn
    cdef object mailbox            # deque of _Call, created on first contention
    cdef bint constructing
    cdef object blocker            # fn given to block_concurrency_while during __init__
    cdef uint64_t last_lsn         # the instance's last commit
    cdef uint64_t tick             # the shard tick of the last use
    cdef bint evicted              # dropped from the shard: stubs must look it up again

    cdef void drop(self):
        """Evicted: a stub may still point here, so let go of everything but the name (the
        stub looks the instance up again on its next call)."""
        self.set_cache(None)
        self.evicted = True
        self.actor = None
        self.ctx = None
        self.mailbox = None

    cdef object committed(self, str key):
        v = self.cache.get(key, _MISSING)
        if v is _MISSING:
            v = self.shard.lookup(self.key, key)
            self.cache[key] = v
            self.cached(_entry(key, v))
        return v

    cdef inline void cached(self, Py_ssize_t delta) except *:
        """The cache grew by DELTA bytes (shrank, if negative)."""
        cdef Shard shard = self.shard
        self.cache_bytes += delta
        if self.evicted:
            return                     # (counted in no shard's total any more)
        shard.cache_bytes += delta
        if (delta > 0 and shard.max_cache_bytes and shard.cache_bytes > shard.max_cache_bytes
                and shard.cache_bytes > shard.cache_retrim and not shard.trim_pending):
            shard.trim_pending = True
            shard.loop.call_soon(shard._trim)

    cdef void set_cache(self, dict cache) except *:
        """The cache becomes CACHE (None: no cache, evicted)."""
        cdef Py_ssize_t n = 0
        if cache:
            for k, v in cache.items():
                n += _entry(k, v)
        self.cache = cache
        self.cached(n - self.cache_bytes)

    cdef void cache_update(self, dict puts) except *:
        """PUTS (key -> bytes, or _ABSENT: deleted) are committed: into the cache."""
        cdef Py_ssize_t delta = 0
        cdef dict cache = self.cache
        for k, v in puts.items():
            old = cache.get(k, _MISSING)
            delta += _entry(k, v) if old is _MISSING else _size(v) - _size(old)
        cache.update(puts)
        if delta:
            self.cached(delta)


@cython.final
cdef class ActorContext:
    """``ctx`` of an actor: its name (``id``), its ``storage``, ``block_concurrency_while``."""

    cdef _Instance _inst
    cdef readonly str id
    cdef readonly Storage storage

    def block_concurrency_while(self, fn):
        """Runs ``fn()`` while every other event of the instance waits (30 s budget, then
        BlockConcurrencyTimeoutError and the activation is torn down). Called from
        ``__init__`` it runs before the first event; inside a turn, await its result."""
        cdef _Instance inst = self._inst
        if inst.constructing:
            if inst.blocker is not None:
                raise RuntimeError("block_concurrency_while was already called in __init__")
            inst.blocker = fn
            f = inst.shard.loop.create_future()
            f.set_result(None)
            return f
        return inst.shard.block_inside_turn(inst, fn)

    def set_alarm(self, when):
        """``ctx.storage.set_alarm(when)``, done at once: awaiting the result is optional."""
        _set_alarm(self.storage._turn(), when)
        f = self._inst.shard.loop.create_future()
        f.set_result(None)
        return f

    def __repr__(self):
        return f"<ActorContext id={self.id!r}>"


@cython.final
@cython.no_gc
@cython.freelist(64)
cdef class _Method:
    cdef ActorStub stub
    cdef str name

    def __call__(self, *args, **kwargs):
        return self.stub._ns.shard.call(self.stub, KIND_CALL, self.name, args, kwargs)

    def __repr__(self):
        return f"<remote method {self.name} of {self.stub!r}>"


@cython.final
cdef class ActorStub:
    """A handle on one instance: ``.id``, ``await stub.method(...)``, ``await stub.fetch(r)``.
    Cheap to make; the instance activates on the first call."""

    cdef readonly str id
    cdef ActorNamespace _ns
    cdef _Instance _inst           # the instance, while it stays resident

    def __getattribute__(self, str name):
        # Every name but the stub's own is a remote method: answer those first, without the
        # failed generic lookup (and its formatted AttributeError) __getattr__ would cost.
        cdef _Method m
        if name in _STUB_OWN or name.startswith("__"):
            return PyObject_GenericGetAttr(self, name)
        m = _Method.__new__(_Method)
        m.stub = self
        m.name = name
        return m

    def fetch(self, request, *, method=None, headers=None, body=None):
        """The instance's ``fetch``: with a Request, or a URL and the request's parts."""
        return self._ns.shard.call(self, KIND_FETCH, "fetch",
                                   (_fetch_input(request, method, headers, body),), None)

    def __eq__(self, other):
        return (isinstance(other, ActorStub) and (<ActorStub>other).id == self.id
                and (<ActorStub>other)._ns is self._ns)

    def __hash__(self):
        return hash((self._ns.type_name, self.id))

    def __repr__(self):
        return f"<ActorStub {self._ns.type_name} {self.id!r}>"


cdef str _unique_id(object id):
    """ID if it is a name new_unique_id makes (64 lower-case hex digits), else an error."""
    if type(id) is not str:
        raise TypeError(f"an instance id is a str, not {type(id).__name__}")
    if len(<str>id) != 64 or not _HEX_ONLY(<str>id):
        raise ValueError(f"{id!r:.80} is not an id new_unique_id made (64 lower-case hex "
                         "digits); a name goes to id_from_name")
    return <str>id


cdef object _HEX_ONLY = re.compile(r"[0-9a-f]*\Z").match


cdef Exception _foreign_stub(object stub, str type_name):
    if isinstance(stub, (ActorStub, RemoteStub)):
        return ValueError(f"{stub!r} is a stub of another namespace, not of {type_name}")
    return TypeError(f"get takes a stub of {type_name} (or a name), not {type(stub).__name__}")


@cython.final
cdef class ActorNamespace:
    """``env.<BINDING>``: reaches the instances of one actor type (ActorNamespace)."""

    cdef readonly str type_name
    cdef readonly object cls
    cdef public object env         # what the type's actors get as env (else the shard's)
    cdef Shard shard
    cdef set _methods             # names check_method found callable over RPC
    cdef str _prefix
    # The budgets of this type's turns, in seconds: its class's, else the shard's.
    cdef readonly double method_timeout
    cdef readonly double fetch_timeout
    cdef readonly double alarm_timeout
    cdef readonly double block_timeout

    def __cinit__(self, Shard shard, str type_name, object cls):
        self.shard = shard
        self.type_name = type_name
        self.cls = cls
        self._methods = set()
        self._prefix = type_name + "\0"
        if cls is not None:
            _note_actor_codes(cls)

    def id_from_name(self, name, *, location_hint=None):
        """The stub of the instance called NAME (a non-empty str of at most 2048 UTF-8
        bytes)."""
        return self.stub(name)

    cdef ActorStub stub(self, object name):
        if type(name) is not str:
            raise TypeError(f"instance names are str, not {type(name).__name__}")
        if not name:
            raise ValueError("instance names must not be empty")
        if not utf8_encodable(<str>name):
            raise ValueError(f"instance name {name!r:.80} is not valid Unicode (a lone "
                             "surrogate)")
        # A bound, as for storage keys: a resident instance keeps its name, and a name often
        # comes from a client (a URL's path), so --max-resident instances of names as long
        # as a request's head allows would hold gigabytes.
        if utf8_longer(<str>name, MAX_NAME_BYTES):
            raise ValueError(f"instance name {name!r:.80} is longer than {MAX_NAME_BYTES} "
                             "UTF-8 bytes")
        cdef ActorStub s = ActorStub.__new__(ActorStub)
        s.id = name
        s._ns = self
        return s

    def new_unique_id(self, *, location_hint=None):
        """The stub of a new instance with a fresh, unguessable 64-hex-digit name."""
        return self.id_from_name(secrets.token_hex(32))

    # Durable Objects' other spellings, so that code written for them reads the same here.
    def get_by_name(self, name, *, location_hint=None):
        """id_from_name under Durable Objects' newer name (getByName)."""
        return self.stub(name)

    def id_from_string(self, id):
        """The stub of the instance whose ``.id`` is ID, a name new_unique_id made (64
        lower-case hex digits), as Durable Objects' idFromString reads a stored id back."""
        return self.stub(_unique_id(id))

    def get(self, stub, *, location_hint=None):
        """STUB itself, a stub of this namespace, as Durable Objects' get(id) takes what
        id_from_name made (a str is a name)."""
        if type(stub) is str:
            return self.stub(stub)
        if type(stub) is ActorStub and (<ActorStub>stub)._ns is self:
            return stub
        raise _foreign_stub(stub, self.type_name)

    cdef object check_method(self, str name):
        """None if callers may call NAME, else a new error (each raise has its own: one
        raised again and again would grow its traceback with every raise). Only the names
        of methods are remembered: names that are not (a client's, passed on by a fetch)
        would otherwise fill memory."""
        if name in self._methods:
            return None
        if name.startswith("_") or name in _NOT_RPC or hasattr(_StatefulActorBase, name):
            return ActorPrivateMethodError(f"{self.type_name}.{name} is not callable over RPC")
        attr = getattr(self.cls, name, None)
        if attr is None or not callable(attr):
            return ActorUnknownMethodError(f"{self.type_name} has no method {name!r}")
        self._methods.add(name)
        return None

    def __repr__(self):
        return f"<ActorNamespace {self.type_name}>"


cdef object _StatefulActorBase = object     # set by fastactor.actor at import
cdef object _AlarmInfo = None
cdef object _AlarmRetry = None
cdef object _check_actor_class = None      # cls -> its budgets, or TypeError/ValueError


def _set_actor_base(cls, alarm_info, alarm_retry, check_actor_class):
    global _StatefulActorBase, _AlarmInfo, _AlarmRetry, _check_actor_class
    _StatefulActorBase = cls
    _AlarmInfo = alarm_info
    _AlarmRetry = alarm_retry
    _check_actor_class = check_actor_class


cdef object _alarm_log = logging.getLogger("fastactor.alarm")
cdef object _shard_log = logging.getLogger("fastactor.shard")
# Seconds a turn's task may go on after it was cancelled (its budget ran out, or serve's
# shutdown stopped it) before its instance lets it go (Shard._stuck).
cdef double STUCK_GRACE = 5.0


cdef uint64_t _shards_made = 0


cdef inline int64_t _now_ms():
    return <int64_t>(time.time() * 1000.0)


@cython.final
cdef class Shard:
    """The engine of one shard: instances, their mailboxes and turns, the output gate over
    one write-ahead log, the overlay of committed writes and the snapshot store."""

    cdef readonly object loop
    cdef object new_future         # a CallFuture on the shard's loop
    cdef readonly WriteAheadLog wal
    cdef readonly _Store store
    cdef readonly str data_dir
    cdef dict instances            # key -> _Instance, least recently used first
    cdef dict dirty                # inst key -> _Layer: committed, not in the snapshot
    cdef dict frozen               # the generation being written to the snapshot, or None
    cdef readonly object env
    cdef double method_timeout
    cdef double fetch_timeout
    cdef double block_timeout
    cdef double idle_timeout
    cdef double checkpoint_interval
    cdef uint64_t checkpoint_bytes
    cdef uint32_t group_delay_us
    cdef uint32_t group_window_us
    cdef uint32_t group_window_records
    cdef uint64_t bytes_since_checkpoint
    cdef uint64_t tick
    cdef uint64_t idle_ticks
    cdef object sweeper
    cdef uint64_t max_resident     # instances kept in memory at most (0: no bound)
    cdef Py_ssize_t cache_bytes    # what resident instances' caches hold (_entry)
    cdef Py_ssize_t max_cache_bytes  # _trim evicts past this (0: no bound)
    cdef Py_ssize_t cache_retrim   # after a _trim that could not get under it: try again past
    cdef uint64_t trim_from        # _trim evicts down to this many (no bound: UINT64_MAX)
    cdef bint trim_pending         # a _trim is scheduled
    cdef object checkpoint_timer
    cdef object checkpoint_task
    cdef object executor
    cdef dict _stats
    cdef dict namespaces           # type name -> ActorNamespace
    cdef TimerWheel wheel          # pending alarms (and alarm retries), by instance key
    cdef dict alarm_handles        # inst key -> the wheel handle of its pending alarm
    cdef dict alarm_retries        # inst key -> retries so far of its failing alarm
    cdef object alarm_timer        # the loop timer armed for the wheel's next due time
    cdef int64_t alarm_timer_at
    cdef double alarm_timeout
    cdef uint64_t n_turns
    cdef uint64_t n_commits
    cdef bint closed
    cdef bint alarms_held          # hold_alarms(): no alarm run starts (serve's shutdown)
    cdef bint turns_stopped        # stop_turns(): no turn starts (serve's shutdown deadline)
    cdef readonly object origin    # this shard's identity in call chains (unique per process)
    # Called with (instance key, retries) as a step of an alarm run starts, and (None, 0) as
    # it ends: serve's watchdog, to learn which alarm held a stalled event loop.
    cdef public object alarm_step_hook
    cdef public double stuck_grace      # see _stuck (STUCK_GRACE; tests shorten it)

    def __cinit__(self, str data_dir, object env, *, double method_timeout=30.0,
                  double fetch_timeout=30.0, double block_timeout=30.0,
                  double idle_timeout=60.0, double checkpoint_interval=30.0,
                  uint64_t checkpoint_bytes=64 << 20, uint32_t group_delay_us=0,
                  uint32_t group_window_us=0, uint32_t group_window_records=16,
                  double alarm_timeout=900.0, uint64_t max_resident=100_000,
                  Py_ssize_t max_cache_bytes=0):
        global _shards_made
        _shards_made += 1
        self.origin = (os.getpid() << 20) + _shards_made
        self.data_dir = data_dir
        self.env = env
        self.method_timeout = method_timeout
        self.fetch_timeout = fetch_timeout
        self.block_timeout = block_timeout
        self.idle_timeout = idle_timeout
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_bytes = checkpoint_bytes
        self.group_delay_us = group_delay_us
        self.group_window_us = group_window_us
        self.group_window_records = group_window_records
        self.alarm_timeout = alarm_timeout
        self.max_resident = max_resident
        self.max_cache_bytes = max_cache_bytes
        self.stuck_grace = STUCK_GRACE
        self.trim_from = max_resident - max_resident // 10 if max_resident else UINT64_MAX
        self.namespaces = {}
        self.alarm_handles = {}
        self.alarm_retries = {}
        self.instances = {}
        self.dirty = {}
        self.frozen = None
        self._stats = {"activations": 0, "evictions": 0, "checkpoints": 0,
                       "replayed_records": 0, "replayed_bytes": 0, "alarms_run": 0,
                       "alarm_retries": 0, "alarms_given_up": 0, "turns_left_behind": 0}

    def open(self):
        """Opens the snapshot and the log and replays the log's tail into the overlay; the
        instances themselves stay on disk until they are called."""
        os.makedirs(self.data_dir, exist_ok=True)
        self.loop = asyncio.get_running_loop()
        self.new_future = functools.partial(CallFuture, loop=self.loop)
        path = os.path.join(self.data_dir, "state.sqlite3")
        try:
            self.store = _Store(path)
        except (sqlite3.Error, UnicodeDecodeError) as e:
            raise snapshot_error(path, e) from None
        try:
            self.wal = WriteAheadLog(os.path.join(self.data_dir, "log"), max_record=256 << 20,
                                     group_delay_us=self.group_delay_us,
                                     group_window_us=self.group_window_us,
                                     group_window_records=self.group_window_records)
        except BaseException:
            self.store.close()
            raise
        try:
            self.wal.reply_error = ActorOutputGateError
            self.wal.bind_loop(self.loop)
            applied = self.store.applied_lsn
            last = self.wal.last_lsn
            if last < applied:
                raise LogCorruptionError(
                    f"{self.data_dir}: the log ends at LSN {last} but the snapshot already "
                    f"holds LSN {applied}: the log directory was replaced or truncated")
            if last > applied:
                if applied + 1 < self.wal.first_lsn:
                    raise LogCorruptionError(
                        f"{self.data_dir}: the snapshot holds LSN {applied} but the log starts "
                        f"at LSN {self.wal.first_lsn}: records in between are missing")
                self._replay(applied + 1)
            self._load_alarms()
        except BaseException:
            # A damaged record or alarm: nothing stays open (the log's lock included), so the
            # directory can be opened again once it is mended.
            self.store.close()
            self.wal.close()
            raise
        self.executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="fastactor-checkpoint")
        self.idle_ticks = 4
        self.sweeper = self.loop.call_later(self.idle_timeout / self.idle_ticks, self._sweep)
        self.checkpoint_timer = self.loop.call_later(self.checkpoint_interval,
                                                     self._periodic_checkpoint)

    cdef void _replay(self, uint64_t start):
        cdef uint64_t n = 0, nbytes = 0
        cdef dict dirty = self.dirty
        cdef _Layer layer
        for lsn, rtype, payload in self.wal.replay(start):
            inst_key, cleared, puts = _record_decode(payload)
            layer = dirty.get(inst_key)
            if layer is None:
                layer = dirty[inst_key] = _Layer()
            layer.apply(cleared, puts)
            n += 1
            nbytes += len(payload)
        self._stats["replayed_records"] = n
        self._stats["replayed_bytes"] = nbytes
        self.bytes_since_checkpoint = nbytes

    @property
    def stats(self):
        return {"turns": self.n_turns, "commits": self.n_commits,
                "cache_bytes": self.cache_bytes,
                "alarms_pending": len(self.alarm_handles),
                "alarm_wheel_bytes": self.wheel.memory if self.wheel is not None else 0,
                **self._stats}

    def cache_audit(self):
        """What the shard counts its resident instances' caches as holding, and what they
        hold counted afresh, entry by entry; then the names of the instances whose own count
        differs from theirs. The counts follow each change instead (the bound is checked at
        every commit and cache miss): this says whether they drifted (tests)."""
        cdef _Instance inst
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t n
        cdef list drifted = []
        for inst in self.instances.values():
            n = 0
            if inst.cache:
                for k, v in inst.cache.items():
                    n += _entry(k, v)
            if n != inst.cache_bytes:
                drifted.append(inst.name)
            total += n
        return self.cache_bytes, total, drifted

    def namespace(self, str type_name, object cls):
        if type_name in self.namespaces:
            raise ValueError(f"actor type {type_name!r} is already registered")
        method, fetch, alarm, block = _check_actor_class(cls)
        ns = ActorNamespace(self, type_name, cls)
        ns.method_timeout = self.method_timeout if method is None else method
        ns.fetch_timeout = self.fetch_timeout if fetch is None else fetch
        ns.alarm_timeout = self.alarm_timeout if alarm is None else alarm
        ns.block_timeout = self.block_timeout if block is None else block
        self.namespaces[type_name] = ns
        return ns

    # -- calls and turns ----------------------------------------------------------------------

    cpdef object call(self, ActorStub stub, int kind, str method, tuple args, object kwargs,
                      object chain=None, object reply=None, bint fresh=False):
        """Posts the call to STUB's instance; the future of its reply. From another worker:
        CHAIN, the call chain it came with (else that of the turn making it, if any); REPLY,
        what takes the reply in place of a future (done, set_result and set_exception, see
        channel.pyx); FRESH, its arguments are the call's own (decoded from its frame), not
        to be copied."""
        cdef ActorNamespace ns = stub._ns
        cdef _Instance inst
        cdef _Call c
        cdef _TurnTask caller = None
        cdef Py_ssize_t at
        if self.closed:
            raise RuntimeError("the runtime is closed")
        if self.turns_stopped:
            raise RuntimeError("the runtime is shutting down: it starts no more calls")
        if kind == KIND_CALL:
            err = ns.check_method(method)
            if err is not None:
                raise err
            if args and not fresh:
                args = <tuple>copy_value(args)
            if kwargs and not fresh:
                kwargs = copy_value(kwargs)
        inst = stub._inst
        if inst is None or inst.evicted:
            inst = stub._inst = self.instance(ns, stub.id)
        if chain is None:
            caller = _calling_turn(self.loop)
            if caller is not None:
                chain = _outgoing_chain(caller)
        if chain is not None and inst.turn is not None:
            at = _cycle_at(inst, <list>chain)
            if at >= 0:
                raise _deadlock(inst, <list>chain, at)
            if _in_chain(inst, <list>chain):
                # Checked again when that turn suspends, and one loop iteration from now: a
                # Task the turn started may be still in the step that made the call, not
                # yet awaiting it.
                inst.turn.suspects += 1
                if inst.turn.tt is not None:
                    self.loop.call_soon(_recheck_cycles, inst.turn.tt)
        if inst.tick != self.tick or <uint64_t>len(self.instances) >= self.trim_from:
            # Most recently used goes last: once a sweep tick, and on every call near
            # max_resident, where _trim evicts from the front.
            del self.instances[inst.key]
            self.instances[inst.key] = inst
            inst.tick = self.tick
        c = _Call.__new__(_Call)
        c.kind = kind
        c.method = method
        c.args = args
        c.kwargs = kwargs
        c.chain = chain
        c.fut = self.new_future() if reply is None else reply
        if caller is not None:
            _made_call(caller, c.fut)
        self.post(inst, c)
        return c.fut

    cdef _Instance instance(self, ActorNamespace ns, str name):
        """The resident entry of NS's instance NAME, made (not activated) if need be."""
        cdef _Instance inst
        key = ns._prefix + name
        inst = self.instances.get(key)
        if inst is None:
            inst = _Instance.__new__(_Instance)
            inst.key = key
            inst.name = name
            inst.shard = self
            inst.ns = ns
            inst.cache = {}
            self.instances[key] = inst
            inst.tick = self.tick
            if (self.max_resident and <uint64_t>len(self.instances) > self.max_resident
                    and not self.trim_pending):
                self.trim_pending = True
                self.loop.call_soon(self._trim)
        return inst

    cdef void post(self, _Instance inst, _Call c) except *:
        if inst.turn is not None or inst.mailbox:
            if inst.mailbox is None:
                inst.mailbox = collections.deque()
            inst.mailbox.append(c)
        else:
            self.pump(inst, c)

    cdef void pump(self, _Instance inst, _Call c):
        """Runs calls of INST until its mailbox is empty or a turn suspends."""
        while True:
            if c is None:
                if not inst.mailbox:
                    return
                c = inst.mailbox.popleft()
            if inst.actor is None and not self.activate(inst, c):
                c = None
                continue
            if inst.blocker is not None:
                # The activation's block_concurrency_while runs before anything else.
                if inst.mailbox is None:
                    inst.mailbox = collections.deque()
                inst.mailbox.appendleft(c)
                chain = c.chain                  # the block runs for that call
                c = _Call.__new__(_Call)
                c.kind = KIND_BLOCK
                c.args = (inst.blocker,)
                c.fut = None
                c.chain = chain
                inst.blocker = None
            if not self.start_turn(inst, c):
                return
            c = None

    cdef bint activate(self, _Instance inst, _Call c):
        cdef ActorContext ctx = ActorContext.__new__(ActorContext)
        ctx._inst = inst
        ctx.id = inst.name
        ctx.storage = Storage(inst)
        inst.ctx = ctx
        cls = inst.ns.cls
        inst.constructing = True
        try:
            env = inst.ns.env if inst.ns.env is not None else self.env
            actor = cls.__new__(cls)
            actor.ctx = ctx
            actor.env = env
            actor.__init__(ctx, env)
        except BaseException as e:
            inst.blocker = None
            self.fail_call(inst, c, remote_error(
                f"{inst.ns.type_name}.__init__ raised {type(e).__name__}: {e}",
                type(e).__name__))
            return False
        finally:
            inst.constructing = False
        inst.actor = actor
        self._stats["activations"] += 1
        return True

    cdef bint start_turn(self, _Instance inst, _Call c):
        """Starts C on INST; True if the turn also ended (no real suspension)."""
        cdef _Turn t = _Turn.__new__(_Turn)
        cdef _WriteSet ws = _WriteSet.__new__(_WriteSet)
        cdef int returned = 0
        ws.puts = {}
        t.inst = inst
        t.call = c
        t.layers = None
        t.top = ws
        inst.turn = t
        self.n_turns += 1
        t.serial = self.n_turns
        try:
            if c.kind == KIND_CALL:
                fn = getattr(inst.actor, c.method)
                r = fn(*c.args, **c.kwargs) if c.kwargs else fn(*c.args)
            elif c.kind == KIND_FETCH:
                r = inst.actor.fetch(*c.args)
            elif c.kind == KIND_ALARM:
                if not self.alarm_due(t):
                    t.dead = True
                    inst.turn = None
                    return True
                retries = self.alarm_retries.get(inst.key, 0)
                hook = self.alarm_step_hook
                if hook is not None:
                    hook(inst.key, retries)
                try:
                    r = inst.actor.alarm(_AlarmInfo(retries, retries > 0))
                finally:
                    if hook is not None:
                        hook(None, 0)
            else:
                r = c.args[0]()
        except BaseException as e:
            self.end(t, None, e)
            return True
        if not PyCoro_CheckExact(r) and not (hasattr(r, "send") and hasattr(r, "throw")):
            if not hasattr(r, "__await__"):
                self.end(t, r, None)
                return True
            r = _await_it(r)
        # The first step runs here, in the caller's step, but as a task of its own and in a
        # copy of the caller's context, as a Task's would.
        cdef _TurnTask tt = _TurnTask.__new__(_TurnTask)
        tt.loop = self.loop
        tt.coro = r
        tt.type_name = inst.ns.type_name
        tt.inst_name = inst.name
        tt.serial = t.serial
        tt.chain = c.chain
        tt.inst = inst
        t.tt = tt
        if c.kind == KIND_ALARM and self.alarm_step_hook is not None:
            tt.alarm_hook = self.alarm_step_hook
            tt.alarm_retries = retries
            tt.alarm_hook(inst.key, retries)
        ctx = tt.context = PyContext_CopyCurrent()
        loop = self.loop
        caller = _swap_task(loop, tt)
        PyContext_Enter(ctx)
        failure = None
        try:
            y = fa_coro_send(r, None, &returned)
        except BaseException as e:
            failure = e
        finally:
            PyContext_Exit(ctx)
            _restore_task(loop, tt, caller)
            if tt.alarm_hook is not None:
                tt.alarm_hook(None, 0)
        if failure is not None:
            tt._finish(None, failure)
            self.end(t, None, failure)
            return True
        if returned:
            tt._finish(y, None)
            self.end(t, y, None)
            return True
        # Suspended for real: a Task carries the rest, under the turn's budget.
        t.task = self.loop.create_task(_continue(r, y, tt), name=tt.get_name(), context=ctx)
        tt.carried_by(t.task)
        t.task.add_done_callback(functools.partial(self._task_done, t))
        cdef ActorNamespace ns = inst.ns
        t.timer = self.loop.call_later(
            ns.method_timeout if c.kind == KIND_CALL else
            ns.fetch_timeout if c.kind == KIND_FETCH else
            ns.alarm_timeout if c.kind == KIND_ALARM else ns.block_timeout,
            self._timeout, t)
        return False

    cdef void end(self, _Turn t, object result, object exc) except *:
        try:
            self.finish(t, result, exc)
        finally:
            t.inst.turn = None

    def _task_done(self, _Turn t, task):
        cdef _Instance inst = t.inst
        try:
            if not t.finished:
                if task.cancelled():
                    self.finish(t, None, asyncio.CancelledError())
                elif task.exception() is not None:
                    self.finish(t, None, task.exception())
                else:
                    self.finish(t, task.result(), None)
            elif not task.cancelled():
                task.exception()                   # seen: a timed-out turn's late end
        finally:
            if inst.turn is t:
                inst.turn = None
        if not self.closed and inst.turn is None:   # (else a turn runs: see _stuck)
            self.pump(inst, None)

    def _timeout(self, _Turn t):
        cdef ActorNamespace ns = t.inst.ns
        if t.finished:
            return
        kind = t.call.kind
        if kind == KIND_CALL:
            err = ActorMethodTimeoutError(
                f"{ns.type_name}.{t.call.method} ran past {ns.method_timeout:g} s")
        elif kind == KIND_FETCH:
            err = ActorFetchTimeoutError(f"{ns.type_name}.fetch ran past {ns.fetch_timeout:g} s")
        elif kind == KIND_ALARM:
            err = ActorMethodTimeoutError(f"{ns.type_name}.alarm ran past {ns.alarm_timeout:g} s")
        else:
            err = BlockConcurrencyTimeoutError(
                f"block_concurrency_while of {ns.type_name} {t.inst.name!r} ran past "
                f"{ns.block_timeout:g} s")
        t.timer = None
        self.finish(t, None, err, True)
        t.task.cancel()
        # The instance stays busy until the task has really ended (see _task_done), or
        # STUCK_GRACE seconds pass.
        self.loop.call_later(self.stuck_grace, self._stuck, t)

    cdef void finish(self, _Turn t, object result, object exc, bint own_error=False) except *:
        """Decides the reply of T, commits its writes, and hands the reply to the gate."""
        cdef _Instance inst = t.inst
        cdef _Call c = t.call
        cdef bint is_exc
        cdef bint committed = False
        if t.finished:
            return
        t.finished = True
        if t.timer is not None:
            t.timer.cancel()
            t.timer = None
        value = None
        if exc is not None:
            # The user's code raised, or (OWN_ERROR) the runtime gave up on it.
            value = exc if own_error else self.map_error(t, exc)
        else:
            try:
                if c.kind == KIND_CALL:
                    value = copy_value(result)
                elif c.kind == KIND_FETCH:
                    value = result
                    if not isinstance(result, Response):
                        # As a raise: the caller gets a TypeError, and nothing commits.
                        exc = value = remote_error(
                            f"{inst.ns.type_name}.fetch returned {type(result).__name__}, "
                            "not a Response", "TypeError")
            except CodecError as e:
                exc = value = CodecError(
                    f"the result of {inst.ns.type_name}.{c.method} can not be sent: {e}")
        if c.kind == KIND_ALARM and exc is None and not t.alarm_touched:
            # It ran: clear the alarm in the same record as the handler's writes.
            (<_WriteSet>(t.layers[0] if t.layers is not None else t.top)).puts[ALARM_KEY] = \
                _ABSENT
        if exc is None:
            try:
                self.commit(t)
            except LogFailedError as e:
                exc = value = ActorOutputGateError(
                    f"the turn's writes could not be made durable: {e}; they may or may not be "
                    "there after a restart")
            except BaseException as e:
                exc = value = e
            else:
                committed = True
                if t.poisoned:
                    exc = value = ActorOutputGateError(
                        "a transaction of this turn raised; its writes were discarded")
        t.dead = True
        is_exc = exc is not None
        if c.kind == KIND_BLOCK:
            if is_exc:
                self.teardown(inst, value)
            return
        if c.kind == KIND_ALARM:
            if not committed:              # (a poisoned turn did commit, and cleared it)
                self.alarm_failed(inst, value)
            else:
                self._stats["alarms_run"] += 1
            return
        if inst.last_lsn <= cwal.fa_wal_durable_lsn(self.wal._w):
            self.resolve(c.fut, value, is_exc)
        else:
            self.wal._hold(inst.last_lsn, c.fut, value, 2 if is_exc else 1)

    cdef object map_error(self, _Turn t, object exc):
        # An error another instance's method raised, let through: the class first raised.
        name = (<str>exc.remote_type if isinstance(exc, ActorMethodError)
                and type(exc.remote_type) is str else type(exc).__name__)
        where = (f"{t.inst.ns.type_name}.{t.call.method}" if t.call.kind == KIND_CALL else
                 f"{t.inst.ns.type_name}.fetch" if t.call.kind == KIND_FETCH else
                 f"{t.inst.ns.type_name}.alarm" if t.call.kind == KIND_ALARM else
                 f"block_concurrency_while of {t.inst.ns.type_name}")
        err = remote_error(f"{where} raised {name}: {exc}", name)
        err.__cause__ = exc
        return err

    cdef void teardown(self, _Instance inst, object err):
        """A failed block_concurrency_while: drop the activation; queued calls fail with ERR;
        the next call activates the instance afresh."""
        self.reset_activation(inst)
        if inst.mailbox:
            while inst.mailbox:
                self.fail_call(inst, <_Call>inst.mailbox.popleft(), err)

    cdef void reset_activation(self, _Instance inst) except *:
        """Drops the actor object of INST: the next call activates it afresh. What the old
        one's code still runs (a task it left behind) can no longer reach the storage, which
        the new activation's turns own."""
        if inst.ctx is not None:
            (<ActorContext>inst.ctx).storage.detached = True
        inst.actor = None
        inst.ctx = None
        inst.set_cache({})

    def _stuck(self, _Turn t):
        """T was ended (its budget ran out, or stop_turns) and its task cancelled stuck_grace
        seconds ago, and the task still runs: its code catches the cancellation and goes on.
        The instance would wait for it for ever, so let it go: the activation is reset (the
        task can no longer use the storage) and the calls waiting run on a new one."""
        cdef _Instance inst = t.inst
        if inst.turn is not t:
            return                     # it did end
        _shard_log.warning(
            "%s %r: %s went on %g s after it was cancelled (does its code catch "
            "CancelledError?): left behind; the instance starts afresh for the next call",
            inst.ns.type_name, inst.name,
            f"its call of {t.call.method}()" if t.call.kind == KIND_CALL else
            "its fetch" if t.call.kind == KIND_FETCH else
            "its alarm run" if t.call.kind == KIND_ALARM else
            "its block_concurrency_while", self.stuck_grace)
        self._stats["turns_left_behind"] += 1
        inst.turn = None
        if inst.evicted:
            return                     # dropped meanwhile (the shard was abandoned)
        self.reset_activation(inst)
        if not self.closed:
            self.pump(inst, None)

    cdef void fail_call(self, _Instance inst, _Call c, object err) except *:
        """C never ran: its caller gets ERR (an alarm counts a failed run)."""
        if c.kind == KIND_ALARM:
            self.alarm_failed(inst, err)
        else:
            self.resolve(c.fut, err, True)

    cdef void resolve(self, object fut, object value, bint is_exc):
        if fut is None or fut.done():
            return
        if is_exc:
            fut.set_exception(value)
        else:
            fut.set_result(value)

    cdef void commit(self, _Turn t) except *:
        cdef _Instance inst = t.inst
        cdef _WriteSet ws
        cdef _Layer layer
        if t.layers is not None:
            while len(t.layers) > 1:           # a transaction left open: it did not finish
                t.layers.pop()
                t.poisoned = True
            ws = <_WriteSet>t.layers[0]
        else:
            ws = t.top
        if not ws.puts and not ws.cleared:
            return
        rec = _record_encode((inst.key, ws.cleared, ws.puts))
        try:
            lsn = self.wal.append(rec)
        except ValueError:
            raise StorageLimitError(
                f"the writes of one turn are {len(rec)} bytes; the limit is 256 MiB") from None
        inst.last_lsn = lsn
        if ws.cleared:
            inst.set_cache(dict(ws.puts))
        else:
            inst.cache_update(ws.puts)
        layer = self.dirty.get(inst.key)
        if layer is None:
            layer = self.dirty[inst.key] = _Layer()
        layer.apply(ws.cleared, ws.puts)
        alarm = ws.puts.get(ALARM_KEY, _MISSING)
        if alarm is not _MISSING:
            self.arm(inst.key, alarm)
        self.n_commits += 1
        self.bytes_since_checkpoint += len(rec)
        if self.bytes_since_checkpoint >= self.checkpoint_bytes and self.checkpoint_task is None:
            self.start_checkpoint()

    def block_inside_turn(self, _Instance inst, fn):
        return self._block_inside_turn(inst, fn)

    async def _block_inside_turn(self, _Instance inst, fn):
        cdef double budget = inst.ns.block_timeout
        try:
            return await asyncio.wait_for(fn(), budget)
        except asyncio.TimeoutError:
            raise BlockConcurrencyTimeoutError(
                f"block_concurrency_while ran past {budget:g} s") from None

    # -- alarms ------------------------------------------------------------------------------
    #
    # The stored alarm (ALARM_KEY) is the truth; the wheel holds one entry per instance with
    # a pending alarm, or with a failed alarm waiting for its retry. A commit that writes the
    # key re-arms the instance's entry. When an entry comes due, an alarm call goes through
    # the instance's mailbox like any call; when its turn starts, the stored alarm must still
    # be due, else the turn does nothing (it was deleted or moved meanwhile).

    cdef void _load_alarms(self) except *:
        """Fills the wheel from the snapshot and the replayed tail, activating nothing."""
        cdef _Layer layer
        cdef TimerWheel wheel = TimerWheel(max(_now_ms(), 0))
        cdef dict handles = self.alarm_handles
        cdef dict replayed = {}                # the log's tail overrides the snapshot
        for key, layer in self.dirty.items():
            v = layer.puts.get(ALARM_KEY, _MISSING)
            if v is not _MISSING:
                replayed[key] = v
            elif layer.cleared:                # delete_all keeps an alarm by rewriting it
                replayed[key] = _ABSENT
        for key, v in self.store.alarms():
            if key not in replayed:
                v = self.store.alarm_time(key, v)
                handles[key] = wheel.add(max(<int64_t>decode_value(v), 0), key)
        for key, v in replayed.items():
            if v is not _ABSENT:
                handles[key] = wheel.add(max(<int64_t>decode_value(v), 0), key)
        self.wheel = wheel
        self.reschedule()

    cdef void arm(self, str key, object encoded) except *:
        """The stored alarm of instance KEY became ENCODED (None: deleted)."""
        h = self.alarm_handles.pop(key, None)
        if h is not None:
            self.wheel.cancel(h)
        self.alarm_retries.pop(key, None)
        if encoded is not _ABSENT:
            self.alarm_handles[key] = self.wheel.add(
                max(<int64_t>decode_value(encoded), 0), key)
            self.reschedule()

    cdef void reschedule(self) except *:
        """Arms the loop's one alarm timer for the wheel's next due time."""
        nxt = self.wheel.next_due()
        if nxt is None or self.closed or self.alarms_held:
            return
        if self.alarm_timer is not None:
            if self.alarm_timer_at <= nxt:
                return
            self.alarm_timer.cancel()
        self.alarm_timer_at = nxt
        # Round up: waking a millisecond early would find nothing due and arm again.
        self.alarm_timer = self.loop.call_later(max(nxt - _now_ms() + 0.5, 0) / 1000.0,
                                                self._fire_alarms)

    def _fire_alarms(self):
        cdef _Call c
        cdef ActorNamespace ns
        self.alarm_timer = None
        if self.closed or self.alarms_held:
            return
        for key in self.wheel.advance(max(_now_ms(), 0)):
            del self.alarm_handles[key]
            type_name, name = key.split("\0", 1)
            ns = self.namespaces.get(type_name)
            if ns is None:
                # Its class is not served now; the stored alarm fires after a restart that
                # serves it again.
                _alarm_log.warning("%s: alarm of %s %r not run: no such actor type is served",
                            self.data_dir, type_name, name)
                continue
            c = _Call.__new__(_Call)
            c.kind = KIND_ALARM
            c.method = "alarm"
            c.fut = None
            self.post(self.instance(ns, name), c)
        self.reschedule()

    cdef bint alarm_due(self, _Turn t) except -1:
        v = t.read(ALARM_KEY)
        return v is not _ABSENT and <int64_t>decode_value(v) <= _now_ms()

    cdef void alarm_failed(self, _Instance inst, object err) except *:
        """The alarm of INST raised, timed out or could not activate it: retry it later as the
        class's policy says, or give up and delete it."""
        key = inst.key
        if key in self.alarm_handles:
            return                             # moved or set again meanwhile: that one runs
        if self.alarms_held:                   # shutting down: no retry here
            _alarm_log.warning("%s %r: alarm run ended early (%s); it stays stored, to run "
                               "after the next start", inst.ns.type_name, inst.name, err)
            return
        policy = getattr(inst.ns.cls, "alarm_retry", None)
        if policy is None:
            policy = _AlarmRetry()
        retries = self.alarm_retries.get(key, 0) + 1
        if retries > policy.limit:
            _alarm_log.warning("%s %r: alarm failed %d times, deleting it; last error: %s",
                        inst.ns.type_name, inst.name, retries, err)
            self.alarm_retries.pop(key, None)
            self._stats["alarms_given_up"] += 1
            self.clear_alarm(inst)
            return
        delay = policy.delay_before(retries)
        _alarm_log.warning("%s %r: alarm failed (%s); retry %d in %g s", inst.ns.type_name,
                    inst.name, err, retries, delay)
        self.alarm_retries[key] = retries
        self._stats["alarm_retries"] += 1
        self.alarm_handles[key] = self.wheel.add(<int64_t>(_now_ms() + delay * 1000.0), key)
        self.reschedule()

    def alarm_stalled(self, str key, int retries, str why):
        """The alarm of instance KEY was running (after RETRIES retries) when this shard's
        last process was killed for holding its event loop (serve's --stall-timeout): that
        run failed, as if it had raised WHY. So an alarm that always blocks is retried as
        its class says and then deleted, rather than stall its worker after every restart."""
        h = self.alarm_handles.get(key)
        type_name, _, name = key.partition("\0")
        ns = self.namespaces.get(type_name)
        if h is None or ns is None:
            return                       # deleted since, or its type is not served now
        del self.alarm_handles[key]
        self.wheel.cancel(h)
        self.alarm_retries[key] = retries
        self.alarm_failed(self.instance(ns, name), why)

    def alarm_keys(self):
        """The instance keys with a pending alarm."""
        return list(self.alarm_handles)

    cdef void clear_alarm(self, _Instance inst) except *:
        """Deletes INST's stored alarm in a record of its own."""
        cdef _Turn t = _Turn.__new__(_Turn)
        cdef _WriteSet ws = _WriteSet.__new__(_WriteSet)
        ws.puts = {ALARM_KEY: _ABSENT}
        t.inst = inst
        t.top = ws
        if inst.cache is None:
            inst.cache = {}
        try:
            self.commit(t)
        except LogFailedError as e:
            _alarm_log.error("%s %r: could not delete the failed alarm: %s", inst.ns.type_name,
                      inst.name, e)

    # -- reads beyond the instance cache -----------------------------------------------------

    cdef object lookup(self, str inst_key, str key):
        cdef _Layer layer
        for gen in (self.dirty, self.frozen):
            if gen is None:
                continue
            layer = (<dict>gen).get(inst_key)
            if layer is not None:
                v = layer.puts.get(key, _MISSING)
                if v is not _MISSING:
                    return v
                if layer.cleared:
                    return _ABSENT
        return self.store.get(inst_key, key)

    # -- eviction ------------------------------------------------------------------------------

    def _sweep(self):
        if self.closed:
            return
        self.tick += 1
        self._evict(self.idle_ticks)
        if self.cache_retrim and not self.trim_pending:
            self.cache_retrim = 0
            self._trim()
        self.sweeper = self.loop.call_later(self.idle_timeout / self.idle_ticks, self._sweep)

    cdef Py_ssize_t _evict(self, uint64_t idle_ticks, Py_ssize_t most=-1,
                           Py_ssize_t free=-1):
        """Drops instances unused for IDLE_TICKS ticks that are between turns and whose last
        commit is durable (a reply held on it must see the same data after a reload): the
        least recently used first, at most MOST of them (-1: all); with FREE (>= 0), only
        those caching values, until their caches add up to FREE bytes."""
        cdef _Instance inst
        cdef list idle = []
        cdef Py_ssize_t freed = 0
        cdef uint64_t durable = cwal.fa_wal_durable_lsn(self.wal._w)
        for inst in self.instances.values():
            if inst.tick + idle_ticks > self.tick or len(idle) == most:
                break
            if free >= 0:
                if freed >= free:
                    break
                if inst.cache_bytes == 0:
                    continue
            if inst.turn is None and not inst.mailbox and inst.last_lsn <= durable:
                idle.append(inst.key)
                freed += inst.cache_bytes
        for key in idle:
            (<_Instance>self.instances.pop(key)).drop()
        self._stats["evictions"] += len(idle)
        if len(idle) > 1024 and len(idle) > 2 * len(self.instances):
            # A dict keeps the table of its largest size: after 100,000 names of a burst,
            # 5 MB for what few remain. A copy (in the same order) is sized to them.
            self.instances = dict(self.instances)
        return len(idle)

    def evict_idle(self):
        """Evicts every instance that is between turns now; returns how many."""
        return self._evict(0)

    def _trim(self):
        """More instances are resident than max_resident, or their caches hold more than
        max_cache_bytes: evicts the least recently used of those that can go (as _evict
        says) down to nine tenths of it, so that names never called twice (a crawler, a
        hostile client) or large values can not fill the worker's memory before the idle
        timer empties it. Where the instances holding the bytes can not go yet (running, or
        their last write not yet durable), the next try waits for the caches to grow by a
        tenth of the bound more, or for the next sweep."""
        self.trim_pending = False
        if self.closed:
            return
        if self.max_resident and <uint64_t>len(self.instances) > self.max_resident:
            self._evict(0, len(self.instances) - <Py_ssize_t>self.trim_from)
        if self.max_cache_bytes and self.cache_bytes > self.max_cache_bytes:
            self._evict(0, -1, self.cache_bytes - (self.max_cache_bytes
                                                   - self.max_cache_bytes // 10))
            self.cache_retrim = (0 if self.cache_bytes <= self.max_cache_bytes else
                                 self.cache_bytes + self.max_cache_bytes // 10)

    @property
    def resident(self):
        return len(self.instances)

    def hold_alarms(self):
        """Starts no more alarm runs; those due stay stored, for the next start. For a
        shutdown that lets running turns end first (serve's), so that alarms do not keep
        coming due while it waits."""
        self.alarms_held = True
        if self.alarm_timer is not None:
            self.alarm_timer.cancel()
            self.alarm_timer = None

    def stop_turns(self):
        """Ends every running turn now, as a timeout would, and starts no more: serve's
        shutdown once its deadline has passed. A stopped call's caller gets a RuntimeError and
        its writes are dropped; a stopped or queued alarm run stays stored, for the next start
        (it is not counted as failed); calls queued or made from now on fail with a
        RuntimeError. Returns how many turns it stopped. Each stays on its instance until its
        task has really ended, or STUCK_GRACE seconds pass (see _stuck)."""
        cdef _Instance inst
        cdef _Turn t
        cdef _Call c
        cdef int stopped = 0
        self.turns_stopped = True
        self.hold_alarms()
        err = RuntimeError("the server shut down before this call ended (its writes are "
                           "dropped)")
        for i in list(self.instances.values()):
            inst = <_Instance>i
            while inst.mailbox:
                c = <_Call>inst.mailbox.popleft()
                if c.kind != KIND_ALARM:
                    self.resolve(c.fut, RuntimeError(
                        "the server shut down before this call started"), True)
            t = inst.turn
            if t is None or t.finished:
                continue
            stopped += 1
            self.finish(t, None, err, True)
            if t.task is not None:
                t.task.cancel()
                self.loop.call_later(self.stuck_grace, self._stuck, t)
        return stopped

    def busy(self):
        """Whether a turn runs or a call waits for one, on any instance."""
        cdef _Instance inst
        for i in self.instances.values():
            inst = <_Instance>i
            if inst.turn is not None or inst.mailbox:
                return True
        return False

    def is_resident(self, str type_name, str name):
        inst = self.instances.get(type_name + "\0" + name)
        return inst is not None and (<_Instance>inst).actor is not None

    # -- checkpoints ---------------------------------------------------------------------------

    def _periodic_checkpoint(self):
        if self.closed:
            return
        if self.dirty and self.checkpoint_task is None:
            self.start_checkpoint()
        self.checkpoint_timer = self.loop.call_later(self.checkpoint_interval,
                                                     self._periodic_checkpoint)

    cdef void start_checkpoint(self) except *:
        self.checkpoint_task = self.loop.create_task(self.checkpoint())
        self.checkpoint_task.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, task):
        if task.cancelled() or task.exception() is None or self.closed:
            return
        _shard_log.warning("%s: checkpoint failed (the log's records stay): %s",
                           self.data_dir, task.exception())

    async def checkpoint(self):
        """Writes the committed overlay into the snapshot, then drops the log segments it
        covers. Reads go on meanwhile (they see the frozen generation)."""
        cdef dict frozen
        if self.frozen is not None or not self.dirty:
            self.checkpoint_task = None
            return 0
        frozen = self.dirty
        self.dirty = {}
        self.frozen = frozen
        lsn = self.wal.last_lsn
        self.bytes_since_checkpoint = 0
        try:
            await self.wal.wait_durable(lsn)
            await self.loop.run_in_executor(self.executor, self.store.apply, frozen, lsn)
        except BaseException:
            self._unfreeze()
            self.checkpoint_task = None
            raise
        self.frozen = None
        removed = await self.loop.run_in_executor(self.executor, self.wal.checkpoint, lsn)
        self._stats["checkpoints"] += 1
        self.checkpoint_task = None
        return removed

    cdef void _unfreeze(self):
        cdef _Layer old, new
        for key, old in self.frozen.items():
            new = self.dirty.get(key)
            if new is not None:
                old.apply(new.cleared, new.puts)
            self.dirty[key] = old
        self.frozen = None

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self, bint checkpoint=True):
        """Stops taking calls, lets running turns end, waits for every reply to be durable,
        checkpoints, and closes the log and the snapshot."""
        if self.closed:
            return
        self.closed = True
        self.sweeper.cancel()
        self.checkpoint_timer.cancel()
        if self.alarm_timer is not None:
            self.alarm_timer.cancel()
        while self._unfinished():
            await asyncio.sleep(0.001)
        if self.checkpoint_task is not None:
            try:
                await self.checkpoint_task
            except BaseException:
                pass
        if self.wal.last_lsn:
            await self.wal.wait_durable(self.wal.last_lsn)
        if checkpoint and self.dirty:
            self.checkpoint_task = None
            await self.checkpoint()
        self.executor.shutdown(wait=True)
        self.wal.close()
        self.store.close()
        self._drop_instances()

    cdef bint _unfinished(self) except -1:
        """Whether a turn still runs. Calls still queued once an instance has no turn never
        start (a closed shard starts none): each caller gets a RuntimeError now, not a wait
        that would hold close() for ever; a queued alarm run stays stored, to run after the
        next start."""
        cdef _Instance inst
        cdef _Call c
        cdef bint running = False
        for i in self.instances.values():
            inst = <_Instance>i
            if inst.turn is not None:
                running = True
                continue
            while inst.mailbox:
                c = <_Call>inst.mailbox.popleft()
                if c.kind != KIND_ALARM:
                    self.resolve(c.fut, RuntimeError(
                        "the runtime closed before this call started"), True)
        return running

    cdef void _drop_instances(self):
        for inst in self.instances.values():
            (<_Instance>inst).drop()
        self.instances.clear()

    def abandon(self):
        """Drops everything the way a crash does: records appended but not yet written are
        lost, nothing is checkpointed, in-flight calls never get a reply."""
        self.closed = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.checkpoint_timer.cancel()
        if self.alarm_timer is not None:
            self.alarm_timer.cancel()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.wal._abandon()
        self.store.close()
        self._drop_instances()
