//! CUDA kernels from programs: to come (the default build needs no CUDA).
