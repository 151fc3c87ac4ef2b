"""An experiment, not part of the kernel package: a Mosaic GPU batch-1 GEMV (gemv_mgpu.py) and
its microbenchmark against XLA (bench_gemv.py), which showed that a TMA pipeline streams decode
weights at the copy bandwidth (the finding behind pallas_kernels/fused_decode/kernel_mgpu.py)."""
