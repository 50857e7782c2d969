// Runs paralelo's CUDA kernels on the CPU, for the tests: each block's threads are real
// threads, `__syncthreads` a barrier among them, `__shared__` memory one static array
// (blocks run one after another). Included before a kernel source; `px_emulate` after.
#include <barrier>
#include <math.h>
#include <string.h>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define PX_BLOCK 8

struct px_dim3 { unsigned x, y, z; };
static thread_local px_dim3 threadIdx, blockIdx;
static px_dim3 blockDim, gridDim;
static std::barrier<>* px_barrier;
static inline void __syncthreads() { px_barrier->arrive_and_wait(); }

// Launches `kernel` (taking its argument block by value) as `grid` blocks of `block`.
template <class Args>
static void px_launch(void (*kernel)(const Args), unsigned grid, unsigned block, const Args* args) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b = 0; b < grid; b++) {
    std::barrier<> barrier(block);
    px_barrier = &barrier;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; t++) {
      threads.emplace_back([=] {
        threadIdx.x = t;
        blockIdx.x = b;
        kernel(*args);
      });
    }
    for (auto& t : threads) t.join();
  }
}
