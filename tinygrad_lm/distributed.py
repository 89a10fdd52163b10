"""Data parallelism over processes and machines: MPI (mpi4py) between ranks, NCCL between GPUs.

``mpiexec -n N tinygrad-lm train ...`` starts N processes (ranks) that each build the same run.
Rank 0's initial weights are broadcast to all; each rank runs its share of the
gradient-accumulation micro-batches of a step; the gradients are summed over the ranks in a
few large flat buckets (Allreduce); every rank then takes the same optimizer step. Outside
mpiexec (or with one process) ``world()`` is a single-process World whose collectives return
their input, and mpi4py is never imported.

A collective waits for every rank, so a rank that fails while the others wait in one would
hang the job. The places where one rank can fail on its own (a step, an evaluation, a save)
run inside ``World.together(what)``: afterwards the ranks exchange their errors, and if any
failed, every rank raises (its own error, or RankFailed naming the failed rank and its
message). A failure anywhere else ends the whole job with MPI_Abort once this rank has printed
it (``World.abort_at_exit``).

Messages between ranks are arrays, or JSON text (``allgather_json``), never pickle."""
from __future__ import annotations

import atexit
import json
import os
import sys
import time
from contextlib import contextmanager

import numpy as np

from . import backend

# PyTorch DDP's default bucket size: a few large messages instead of one per tensor
BUCKET_BYTES = 25 * 2**20
# set by launchers for every process they start: MPICH/Intel MPI (Hydra) and Slurm's PMI; Open MPI
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


class DistributedError(RuntimeError):
    """Data-parallel training cannot start or go on (no mpi4py; another rank failed)."""


class RankFailed(DistributedError):
    """Another rank failed; this one stops too. The message names the rank and its error."""


def launched() -> bool:
    """Whether an MPI launcher started this process as one of several (decided without importing MPI)."""
    for var in _SIZE_VARS:
        if var in os.environ:
            return int(os.environ[var] or 1) > 1
    return "PMIX_RANK" in os.environ  # PMIx alone (Slurm srun --mpi=pmix) gives no size: MPI will tell


_WORLD = None


def world(device: str | None = None) -> "World":
    """This process's World, made on the first call: MPI's when launched() and it has more than
    one rank, else a single process. device "cuda": each rank of a machine takes its own GPU
    (call this before anything is put on a GPU) and gradients travel over NCCL."""
    global _WORLD
    if _WORLD is None:
        comm = None
        if launched():
            try:
                from mpi4py import MPI
            except ImportError:
                size = next((os.environ[v] for v in _SIZE_VARS if v in os.environ), "several")
                raise DistributedError(f"this process was started by an MPI launcher as one of {size} processes, "
                                       "but mpi4py is not installed: pip install 'tinygrad_lm[mpi]'") from None
            comm = MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
        _WORLD = World(comm)
    if device is not None and backend.normalize_device(device) == "cuda":
        _WORLD.use_gpu()
    return _WORLD


class World:
    """rank and size of this job, and the collectives the training loop needs. Without a
    communicator (one process) every collective returns its input and nothing is imported."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.failed_together = False   # a together() block failed on some rank and every rank knows
        self.last_allreduce_s = 0.0    # seconds of the last allreduce_gradients (logs, benchmarks)
        self._abort_pending = False
        self._gpu = None               # the GPU this rank uses (device "cuda")
        self._nccl = None              # the NCCL communicator, made on the first GPU collective
        if self.size > 1:
            self._hook = sys.excepthook
            sys.excepthook = self._excepthook
            atexit.register(self._abort_if_pending)

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size})"

    # ---- who does what ------------------------------------------------------------------
    def shard(self, n: int) -> range:
        """This rank's contiguous share of items 0..n-1 (as even as n allows; rank 0 first)."""
        return range(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    # ---- small collectives on the host ------------------------------------------------------
    def sum(self, values: np.ndarray) -> np.ndarray:
        """Elementwise sum over the ranks of a small host array. A rank that fills only its own
        entries (zeros elsewhere) gets every rank's values exactly: x + 0 is x."""
        values = np.array(values, dtype=np.float64)
        if self.size > 1:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any (e.g. Ctrl-C reached one rank)."""
        return bool(self.sum(np.array([float(bool(flag))]))[0] > 0)

    def allgather_json(self, obj) -> list:
        """Every rank's ``obj`` (JSON-able), in rank order, sent as JSON text."""
        if self.size == 1:
            return [json.loads(json.dumps(obj))]   # as a round trip would give it (tuples become lists)
        data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([data.size], dtype=np.int64), sizes)
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        self.comm.Allgatherv(data, (out, sizes))
        ends = np.cumsum(sizes)
        return [json.loads(out[end - n:end].tobytes()) for n, end in zip(sizes, ends)]

    # ---- failures -----------------------------------------------------------------------------
    @contextmanager
    def together(self, what: str):
        """Run a block that may fail on some ranks only; afterwards every rank knows. If any rank
        failed, each raises: its own error, or RankFailed("rank R failed {what}: its message")."""
        if self.size == 1:
            yield
            return
        error = None
        try:
            yield
        except (Exception, KeyboardInterrupt) as e:
            error = e
        reports = self.allgather_json(None if error is None else f"{type(error).__name__}: {_one_line(error)}")
        failed = [(rank, message) for rank, message in enumerate(reports) if message is not None]
        if not failed:
            return
        self.failed_together = True
        if error is not None:
            raise error
        rank, message = failed[0]
        more = f" (and {len(failed) - 1} more ranks)" if len(failed) > 1 else ""
        raise RankFailed(f"rank {rank} failed {what}{more}: {message}; rank {self.rank} stops too")

    def abort_at_exit(self) -> None:
        """An error reached the top on this rank: unless every rank met it together, end the whole
        job when this process exits (MPI_Abort), so that no other rank waits for it forever."""
        if self.size > 1 and not self.failed_together:
            self._abort_pending = True

    def _excepthook(self, kind, value, tb):
        self._hook(kind, value, tb)   # the traceback first, then the abort at exit
        self.abort_at_exit()

    def _abort_if_pending(self):
        if self._abort_pending:
            sys.stdout.flush()
            sys.stderr.flush()
            print(f"rank {self.rank} of {self.size} failed alone: aborting every rank (MPI_Abort)",
                  file=sys.stderr, flush=True)
            self.comm.Abort(1)

    # ---- parameters and gradients ------------------------------------------------------------
    def broadcast_parameters(self, params) -> None:
        """Every rank's parameters become rank 0's (one process's initial weights, for all)."""
        if self.size > 1:
            arrays = [p.data for p in params]
            for bucket in make_buckets(arrays):
                flat = flatten(bucket)
                self._broadcast(flat)
                unflatten(flat, bucket)

    def allreduce_gradients(self, params) -> None:
        """Sum the gradients of the trainable ``params`` over the ranks, in place, in buckets of
        BUCKET_BYTES. A gradient that is None on every rank stays None (the optimizer skips it, as
        one process would); None on some ranks only counts as zeros there."""
        if self.size == 1:
            return
        t0 = time.perf_counter()
        params = [p for p in params if p.requires_grad]
        holders = self.sum(np.array([p.grad is not None for p in params]))   # ranks with each gradient
        params = [p for p, n in zip(params, holders) if n > 0]
        for p in params:
            if p.grad is None:   # this rank's micro-batches did not reach p
                p.grad = backend.xp_of(p.data).zeros_like(p.data)
        for bucket in make_buckets([p.grad for p in params]):
            flat = flatten(bucket)
            self._allreduce(flat)
            unflatten(flat, bucket)
        self.last_allreduce_s = time.perf_counter() - t0

    def _allreduce(self, flat) -> None:
        """In-place sum over the ranks of one flat array: NCCL on a GPU, MPI on the host."""
        if backend.device_of(flat) == "cuda":
            nccl, comm, stream = self._nccl_comm()
            comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, _nccl_dtype(nccl, flat.dtype), nccl.NCCL_SUM,
                           stream.ptr)
            stream.synchronize()
        else:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)

    def _broadcast(self, flat) -> None:
        """In place: rank 0's flat array on every rank."""
        if backend.device_of(flat) == "cuda":
            nccl, comm, stream = self._nccl_comm()
            comm.bcast(flat.data.ptr, flat.size, _nccl_dtype(nccl, flat.dtype), 0, stream.ptr)
            stream.synchronize()
        else:
            self.comm.Bcast(flat, root=0)

    # ---- GPUs (untested here: no GPU on the machines this was written on) ---------------------
    def use_gpu(self) -> None:
        """Make this rank's GPU the current one: the local rank's (the ranks of one machine in
        order), or the only one the launcher left visible (CUDA_VISIBLE_DEVICES per rank)."""
        if self.size == 1 or self._gpu is not None:
            return
        from mpi4py import MPI
        cp = backend.cupy_module()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)   # the ranks on this machine
        local, per_machine = node.Get_rank(), node.Get_size()
        node.Free()
        count = cp.cuda.runtime.getDeviceCount()
        if count != 1 and count < per_machine:
            raise ValueError(f"{per_machine} ranks on this machine but {count} GPUs: start at most one rank per "
                             f"GPU (e.g. mpiexec -n {count}), or set CUDA_VISIBLE_DEVICES per rank")
        self._gpu = local if count > 1 else 0
        cp.cuda.Device(self._gpu).use()

    def _nccl_comm(self):
        """(the cupy.cuda.nccl module, this job's NcclCommunicator, the stream it runs on)."""
        cp = backend.cupy_module()
        from cupy.cuda import nccl
        if self._nccl is None:
            if not nccl.available:
                raise DistributedError("device cuda under mpiexec needs NCCL, which this CuPy cannot load: "
                                   "pip install nvidia-nccl-cu12 (or the NCCL of your CUDA)")
            # rank 0 makes the communicator's id; every rank joins with it (sent as JSON numbers)
            uid = nccl.get_unique_id() if self.rank == 0 else b""
            sent = self.allgather_json({"bytes": isinstance(uid, bytes), "id": list(uid)})[0]
            uid = bytes(sent["id"]) if sent["bytes"] else tuple(sent["id"])
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return nccl, self._nccl, cp.cuda.get_current_stream()


def _nccl_dtype(nccl, dtype):
    kinds = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
             np.dtype(np.float64): nccl.NCCL_FLOAT64}
    if np.dtype(dtype) not in kinds:
        raise TypeError(f"NCCL allreduce of {np.dtype(dtype)} arrays is not supported (float16/32/64 only)")
    return kinds[np.dtype(dtype)]


# ---- buckets: many arrays as a few contiguous ones --------------------------------------------

def make_buckets(arrays, bucket_bytes: int = BUCKET_BYTES) -> list[list]:
    """``arrays`` grouped in order into buckets of one dtype and device, each at most
    ``bucket_bytes`` (an array larger than that is a bucket of its own). The grouping depends only
    on the shapes, dtypes and order, so every rank makes the same buckets from the same model."""
    buckets, size = [], 0
    for a in arrays:
        last = buckets[-1][-1] if buckets else None
        fits = (last is not None and a.dtype == last.dtype and backend.device_of(a) == backend.device_of(last)
                and size + a.nbytes <= bucket_bytes)
        if fits:
            buckets[-1].append(a)
            size += a.nbytes
        else:
            buckets.append([a])
            size = a.nbytes
    return buckets


def flatten(arrays):
    """One new contiguous 1-D array holding ``arrays`` (one dtype, one device) one after another."""
    return backend.xp_of(arrays[0]).concatenate([a.ravel() for a in arrays])


def unflatten(flat, arrays) -> None:
    """Copy ``flat`` (as flatten made it) back into ``arrays``, in place."""
    start = 0
    for a in arrays:
        a[...] = flat[start:start + a.size].reshape(a.shape)
        start += a.size
    if start != flat.size:
        raise ValueError(f"unflatten: the arrays hold {start} values, the flat array {flat.size}")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
