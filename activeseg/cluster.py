"""Where whole-stack work and studies run: in this process, on local worker processes, or on a Dask cluster.

A scheduler is named by one string (``--scheduler``):

- ``"inline"`` (the default): everything runs in this process, exactly as without Dask;
  nothing here imports Dask then.
- ``"local:N"``: a :class:`distributed.LocalCluster` of N worker processes on this
  machine, started for the command and closed after it.
- ``"tcp://HOST:PORT"`` (or ``tls://``): an existing Dask cluster (``dask scheduler`` and
  ``dask worker`` started by the user). Its workers need activeseg installed and read
  access to the data and the session (write access to the output's folder).

:func:`parse_scheduler` checks the text, :func:`open_client` gives a connected
``distributed.Client`` (None for inline), and :func:`run_tasks` submits one task per item
and yields the results as they complete, with progress. A task that loses its worker (a
killed process) is re-run on another worker by Dask (``allowed_failures`` of the
scheduler, 3 by default); a task that raises is not retried: its error reaches the
caller. See docs/architecture.md §11.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from activeseg.errors import ConfigError

log = logging.getLogger("activeseg.cluster")

INLINE = "inline"
_LOCAL = re.compile(r"^local:(\d+)$")
_REMOTE = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s]+$")
EXAMPLES = "inline, local:4 or tcp://10.0.0.5:8786"


@dataclass(frozen=True)
class Scheduler:
    """A parsed ``--scheduler``.

    Attributes
    ----------
    kind : "inline", "local" or "remote".
    workers : worker processes of a local cluster (0 otherwise).
    address : the scheduler's address of a remote cluster (None otherwise).
    """

    kind: str
    workers: int = 0
    address: str | None = None

    @property
    def inline(self) -> bool:
        return self.kind == "inline"

    def __str__(self) -> str:
        if self.kind == "local":
            return f"local:{self.workers}"
        return self.address if self.kind == "remote" else INLINE  # type: ignore[return-value]


def parse_scheduler(text: str | Scheduler | None) -> Scheduler:
    """The :class:`Scheduler` of a ``--scheduler`` value (None = inline).

    Raises
    ------
    ConfigError : anything other than ``inline``, ``local:N`` (N >= 1) or a
        ``tcp://HOST:PORT`` address.
    """
    if text is None:
        return Scheduler(INLINE)
    if isinstance(text, Scheduler):
        return text
    value = str(text).strip()
    if value.lower() == INLINE:
        return Scheduler(INLINE)
    m = _LOCAL.match(value.lower())
    if m:
        n = int(m.group(1))
        if n < 1:
            raise ConfigError(f"--scheduler local:N needs at least one worker (N >= 1), got {value!r}")
        return Scheduler("local", workers=n)
    if _REMOTE.match(value):
        return Scheduler("remote", address=value)
    raise ConfigError(
        f"--scheduler must be 'inline', 'local:N' (N worker processes on this machine) or the address of a "
        f"running Dask scheduler such as tcp://HOST:8786; got {value!r} (e.g. {EXAMPLES})"
    )


def _cuda_devices() -> int:
    """CUDA devices visible here (0 without torch or CUDA); torch is imported only if already loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install is "no GPU" here; the device code says why
        return 0


_ACTIVE: dict[str, Any] = {}
"""The client a command keeps open for all its whole-stack work (:func:`use_scheduler`), by scheduler text."""


def _pin_gpu(index: int) -> None:
    """Give this worker process its own CUDA device (before torch is loaded in it)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)


@contextmanager
def open_client(scheduler: Scheduler | str | None, *, threads_per_worker: int = 1,
                memory_limit: str | float | None = "auto") -> Iterator[Any]:
    """A connected ``distributed.Client`` for ``scheduler`` (None for inline), closed on exit.

    Inside :func:`use_scheduler` for the same scheduler, that command's client is
    reused (and left open). A local cluster gets ``threads_per_worker`` task slots per
    worker process and, when this machine has at least as many CUDA devices as workers,
    one ``GPU`` resource per worker and its own device (``CUDA_VISIBLE_DEVICES``). A
    remote cluster is used as it is; its workers advertise ``GPU`` themselves
    (``dask worker ADDRESS --resources GPU=1``).

    Raises
    ------
    ConfigError : the remote scheduler cannot be reached (with the address and how to
        start one).
    """
    sched = parse_scheduler(scheduler)
    if sched.inline:
        yield None
        return
    active = _ACTIVE.get(str(sched))
    if active is not None:
        yield active
        return
    # Dask is imported only when a cluster is asked for: inline runs never load it
    from distributed import Client, LocalCluster

    if sched.kind == "local":
        gpus = _cuda_devices()
        resources = {"GPU": 1} if gpus and sched.workers <= gpus else None
        cluster = LocalCluster(
            n_workers=sched.workers, threads_per_worker=max(1, int(threads_per_worker)), processes=True,
            dashboard_address=":0", silence_logs=logging.ERROR, memory_limit=memory_limit,
            resources=resources,
        )
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
        try:
            if resources:
                for i, address in enumerate(sorted(client.scheduler_info()["workers"])):
                    client.run(_pin_gpu, i, workers=[address])
            yield client
        finally:
            client.close()
            cluster.close()
        return
    try:
        client = Client(sched.address, timeout="20s")
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {sched.address} ({exc}); start one with `dask scheduler` and "
            f"workers with `dask worker {sched.address}` on machines that can read the data, or use "
            "--scheduler local:N to run on this machine"
        ) from exc
    try:
        yield client
    finally:
        client.close()


@contextmanager
def use_scheduler(scheduler: Scheduler | str | None) -> Iterator[Any]:
    """Open ``scheduler``'s client once for a whole command (checked up front: an unreachable
    cluster fails before any work) and let every :func:`open_client` inside reuse it."""
    sched = parse_scheduler(scheduler)
    if sched.inline or str(sched) in _ACTIVE:
        yield None
        return
    with open_client(sched) as client:
        _ACTIVE[str(sched)] = client
        try:
            yield client
        finally:
            _ACTIVE.pop(str(sched), None)


def worker_pids(client: Any) -> dict[str, int]:
    """Worker address -> process id of every worker of ``client``'s cluster."""
    return dict(client.run(os.getpid))


def has_gpu_workers(client: Any) -> bool:
    """True when some worker advertises a ``GPU`` resource."""
    info = client.scheduler_info()
    return any((w.get("resources") or {}).get("GPU") for w in info.get("workers", {}).values())


def run_tasks(
    client: Any,
    fn: Callable[..., Any],
    items: Sequence[Any] | Iterable[Any],
    *,
    progress: Callable[[int, int], None] | None = None,
    resources: Mapping[str, float] | None = None,
    key: str = "activeseg",
    return_exceptions: bool = False,
) -> Iterator[tuple[int, Any]]:
    """Submit ``fn(item)`` for every item; yield ``(index, result)`` as they complete.

    Parameters
    ----------
    client : a ``distributed.Client``, or None to run the items one after another in
        this process (inline: no Dask involved).
    fn : a module-level function (workers import it by name).
    items : its arguments, one per task (small, picklable values: paths, numbers,
        bytes of a model).
    progress : ``progress(done, total)`` after each completed task (and once at 0).
    resources : Dask resources each task needs (e.g. ``{"GPU": 1}``).
    key : the prefix of the task keys (what the Dask dashboard shows).
    return_exceptions : yield a failed task's exception as its result (e.g.
        ``KilledWorker``: its worker died more often than Dask retries) and let the
        other tasks go on, instead of raising it.

    Raises
    ------
    The first task's exception as raised on its worker (without ``return_exceptions``);
    the other tasks are cancelled.
    """
    items = list(items)
    total = len(items)
    if progress:
        progress(0, total)
    if client is None:
        for i, item in enumerate(items):
            try:
                res = fn(item)
            except Exception as exc:
                if not return_exceptions:
                    raise
                res = exc
            if progress:
                progress(i + 1, total)
            yield i, res
        return
    from distributed import as_completed  # Dask: only with a cluster

    token = uuid.uuid4().hex[:10]  # unique keys: several commands may share one cluster
    futures = client.map(fn, items, key=[f"{key}-{token}-{i}" for i in range(total)], pure=False, resources=resources)
    index = {f.key: i for i, f in enumerate(futures)}
    waiting = {f.key: f for f in futures}
    done = 0
    try:
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as exc:
                if not return_exceptions:
                    raise
                res = exc
            # drop every reference to a finished task so the cluster frees its result now
            waiting.pop(fut.key, None)
            fut.release()
            done += 1
            if progress:
                progress(done, total)
            yield index[fut.key], res
            del res
    finally:
        client.cancel(list(waiting.values()))
