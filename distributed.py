"""Training beyond one process: what a script needs when ``torchrun`` (``python -m torch.distributed.run``) starts
it several times, on one machine or several.

torchrun gives each process ``RANK`` (0 .. WORLD_SIZE - 1 over all machines), ``LOCAL_RANK`` (its index on its
machine, which picks its GPU), ``WORLD_SIZE`` and the rendezvous address; without them (a plain ``python``
start) every helper here acts as for a single process, so the scripts run one code path either way.

- ``process_group(device)``: the process group for the run (gloo on CPU, nccl on CUDA), closed at the end
  (``init`` / ``cleanup``); ``device_for_process`` puts each process on ``cuda:LOCAL_RANK``.
- ``rank()``, ``world_size()``, ``is_main()``, ``active()``; ``barrier()``, ``broadcast_object`` (rank 0's value
  everywhere), ``all_gather_arrays``; ``main_first()`` (rank 0 runs a block before the others, e.g. to fill the
  landmark cache once) and ``run_on_main(fn)`` (rank 0 alone, the others wait).
- ``only_main_prints()``: every process but rank 0 prints nothing (``error_stream()`` is where a line that must
  show from any process goes).
- ``wrap_ddp``: ``DistributedDataParallel`` around a network (optionally around one of its methods), and
  ``EpochShuffleSampler``, the ``DistributedSampler`` whose shuffle is the single-process one split between ranks,
  and ``WorkerReseed``, which keeps the loader workers of different ranks from augmenting alike.
- ``my_share(items)``: the items (folds, subjects) this process runs when independent jobs are spread over the
  processes (item i on rank i % world); ``publish`` / ``wait_for_published`` exchange their results through small
  JSON files in the run folder, which a job that takes hours on one rank and minutes on another waits for
  without any collective timeout.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

import utils
from utils import UserError

T = TypeVar('T')

# A collective waits this long before it gives up: the other processes may wait in one while rank 0 detects the
# landmarks of a new data set (once; they are cached) or scores the validation split. torchrun stops every
# process as soon as one fails, so a long timeout never hides a crash.
COLLECTIVE_TIMEOUT = timedelta(hours=6)
POLL_SECONDS = 0.5  # how often rank 0 looks for the result files of the other processes


# where this process stands

def launched() -> bool:
    """Whether torchrun started this process as one of two or more (``WORLD_SIZE`` > 1 in the environment)."""
    return int(os.environ.get('WORLD_SIZE', '1') or 1) > 1


def active() -> bool:
    """Whether a process group of two or more processes is initialised (``process_group``)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank over all machines (0 without torchrun)."""
    if active():
        return dist.get_rank()
    return int(os.environ.get('RANK', '0') or 0) if launched() else 0


def world_size() -> int:
    """The number of processes of the run (1 without torchrun)."""
    return dist.get_world_size() if active() else int(os.environ.get('WORLD_SIZE', '1') or 1)


def local_rank() -> int:
    """This process's index on its machine (0 without torchrun); it picks the GPU."""
    return int(os.environ.get('LOCAL_RANK', '0') or 0) if launched() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes the run's shared files and prints."""
    return rank() == 0


# the process group

def device_for_process(device: torch.device) -> torch.device:
    """Under torchrun each process of a CUDA run takes ``cuda:LOCAL_RANK`` (made the current device, as nccl
    needs); a CPU device, and any device without torchrun, is returned as it is."""
    if not launched() or device.type != 'cuda':
        return device
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise UserError(f'torchrun started process {index} on a machine with {count} CUDA device(s); give '
                        f'--nproc_per_node {count} or fewer')
    if device.index is not None and device.index != index:
        print(f'note: --device {device} ignored under torchrun: each process uses cuda:LOCAL_RANK')
    torch.cuda.set_device(index)
    return torch.device('cuda', index)


def init(device: torch.device) -> bool:
    """Join the processes torchrun started into one group (nccl when ``device`` is CUDA, else gloo). Returns
    whether this call made the group: nothing happens without torchrun, with one process or when one exists."""
    if not launched() or not dist.is_available() or dist.is_initialized():
        return False
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    options = {'device_id': device} if backend == 'nccl' else {}
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, **options)
    print(f'distributed: {dist.get_world_size()} processes ({backend}); rank 0 of them writes the shared files '
          f'and prints')
    return True


def cleanup() -> None:
    """Leave the process group (nothing without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """``init`` for the block and ``cleanup`` when it ends, however it ends (a group made before is left as it
    is)."""
    made = init(device)
    try:
        yield
    finally:
        if made:
            cleanup()


def barrier() -> None:
    """Wait until every process reaches this point (nothing without a process group)."""
    if active():
        if dist.get_backend() == 'nccl':
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every process (any picklable object); ``value`` itself without a process group."""
    if not active():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_arrays(array: np.ndarray | Sequence[float]) -> list[np.ndarray]:
    """Every process's ``array`` (shapes may differ), in rank order; ``[array]`` without a process group."""
    array = np.asarray(array)
    if not active():
        return [array]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, array)
    return [np.asarray(item) for item in gathered]


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block before the other processes do (they wait for it), e.g. a data set build that fills
    the landmark cache, which the others then read."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def run_on_main(fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 alone while the others wait; its result on rank 0, None on the others. When it fails on
    rank 0 the others stop too, with a line saying so (rank 0 reports the error itself)."""
    if not active():
        return fn()
    failure = None
    if is_main():
        try:
            result = fn()
        except BaseException as err:
            broadcast_object(f'{type(err).__name__}: {err}')
            raise
        broadcast_object(failure)
        return result
    failure = broadcast_object(None)
    if failure is not None:
        raise UserError(f'rank 0 stopped before the work began ({failure})')
    return None


# printing

_real_stderr: list[TextIO] = []  # standard error as it was where only_main_prints silenced it


@contextmanager
def only_main_prints() -> Iterator[None]:
    """Within the block every process but rank 0 sends its standard output and standard error nowhere (progress
    bars and warnings included), so a run of N processes prints what a single one prints. A line that must show
    from whichever process has it (a failed fold) goes to ``error_stream()``; an error that ends a process is
    reported after the block, by ``utils.run_cli``."""
    if is_main():
        yield
        return
    with open(os.devnull, 'w') as devnull:
        _real_stderr.append(sys.stderr)
        try:
            with redirect_stdout(devnull), redirect_stderr(devnull):
                yield
        finally:
            _real_stderr.pop()


def error_stream() -> TextIO:
    """Standard error of this process, also inside ``only_main_prints`` on a process other than rank 0."""
    return _real_stderr[-1] if _real_stderr else sys.stderr


def report_failure(what: str, err: Exception, others: str) -> str:
    """Say on ``error_stream()`` that ``what`` (e.g. ``fold 3``) failed and ``others`` go on, with the traceback
    unless it is a ``UserError`` (a message for the user, not a bug); returns the error as one line."""
    text = str(err) if isinstance(err, UserError) else f'{type(err).__name__}: {err}'
    if not isinstance(err, UserError):
        traceback.print_exc(file=error_stream())
    print(f'error: {what} failed: {text}; the other {others} go on', file=error_stream(), flush=True)
    return text


# data parallel training

class _MethodAsForward(nn.Module):
    """Calls one method of ``module`` as its forward, so that DistributedDataParallel (which runs ``forward``
    only) can run another pass, e.g. ``forward_multitask``; its parameters are those of ``module``, in order."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, self.method)(*args, **kwargs)


def wrap_ddp(model: nn.Module, device: torch.device, forward: str = 'forward') -> nn.Module:
    """``DistributedDataParallel`` of ``model`` (already on ``device``), running its method ``forward``: every
    process starts from rank 0's weights, and each backward pass averages the gradients over the processes."""
    from torch.nn.parallel import DistributedDataParallel

    module = model if forward == 'forward' else _MethodAsForward(model, forward)
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == 'cuda' else None)


class EpochShuffleSampler(DistributedSampler):
    """A ``DistributedSampler`` whose shuffle is the one a single process draws: the permutation comes from
    ``generator`` (the training loader's, seeded at each epoch) at the moment ``RandomSampler`` would draw it,
    and rank r takes its photos r, r + W, r + 2W... (W processes). Step k of every process together thus reads
    the photos of step k of a single process whose batch is W times as large. As in ``DistributedSampler``, a
    set whose size is no multiple of W repeats its first photos so every process takes as many steps.
    ``set_epoch`` is kept for the contract; without a generator it shuffles as ``DistributedSampler`` does."""

    def __init__(self, dataset: Dataset, generator: torch.Generator | None, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, drop_last=False)
        self.generator = generator

    def __iter__(self) -> Iterator[int]:
        if self.generator is None:
            return super().__iter__()
        indices = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        while len(indices) < self.total_size:
            indices += indices[:self.total_size - len(indices)]
        return iter(indices[self.rank:self.total_size:self.num_replicas])


class WorkerReseed:
    """``worker_init_fn`` of a training loader on rank ``rank`` > 0: its workers' random streams are drawn from
    their own seed and the rank, so no two processes augment alike (the workers of every rank would otherwise
    start from the same seeds)."""

    def __init__(self, rank: int):
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        entropy = [torch.initial_seed() % 2 ** 64, self.rank]
        utils.seed_everything(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1)))


# independent jobs spread over the processes

def my_share(items: Sequence[T]) -> list[T]:
    """The items this process runs: item i (0-based) on rank i % world; every item without torchrun."""
    return [item for index, item in enumerate(items) if index % world_size() == rank()]


def owner_of(index: int) -> int:
    """The rank that runs item ``index`` (0-based) of ``my_share``."""
    return index % world_size()


def publish(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write a job's result for rank 0 (JSON, atomically: rank 0 never reads half a file)."""
    return utils.atomic_write_text(path, json.dumps(utils.to_plain(payload), indent=1))


def wait_for_published(paths: Sequence[str | os.PathLike], accept: Callable[[dict], bool] = lambda payload: True,
                       what: str = 'results') -> dict[Path, dict[str, Any]]:
    """The payloads ``publish`` wrote at ``paths``, once every one is there and ``accept`` takes it (e.g. its run
    identity is this run's, not an earlier run's). Waits as long as it takes; torchrun stops this process when
    another one dies."""
    waiting = [Path(p) for p in paths]
    found: dict[Path, dict[str, Any]] = {}
    announced = False
    while True:
        for path in list(waiting):
            try:
                payload = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if accept(payload):
                found[path] = payload
                waiting.remove(path)
        if not waiting:
            return found
        if not announced:
            print(f'waiting for the {what} of the other processes ({len(waiting)} to come)')
            announced = True
        time.sleep(POLL_SECONDS)
