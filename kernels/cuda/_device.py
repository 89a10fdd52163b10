"""Device functions shared by the kernels: block-wide reductions through shared memory.

A tree reduction: each thread writes its partial, then in log2(blockDim.x) rounds the first half
of the threads adds the second half's values to its own. blockDim.x must be a power of 2 and
every thread of the block must call it (it contains syncthreads). ``buf`` is a shared array of
at least blockDim.x elements; every thread gets the result."""
from numba import cuda


@cuda.jit(device=True)
def block_sum(buf, value):
    tid = cuda.threadIdx.x
    # A previous reduction on buf may still be reading buf[0] in slower threads: wait for them
    # before overwriting it.
    cuda.syncthreads()
    buf[tid] = value
    cuda.syncthreads()  # every partial is written before any thread reads its partner's
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        cuda.syncthreads()  # this round's sums are written before the next round reads them
        step //= 2
    return buf[0]


@cuda.jit(device=True)
def block_max(buf, value):
    tid = cuda.threadIdx.x
    cuda.syncthreads()  # as in block_sum: earlier readers of buf[0] are done
    buf[tid] = value
    cuda.syncthreads()  # every partial is written before any thread reads its partner's
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buf[tid] = max(buf[tid], buf[tid + step])
        cuda.syncthreads()  # this round's maxima are written before the next round reads them
        step //= 2
    return buf[0]
