"""PyTorch scaled_dot_product_attention at the shapes of the CUDA benches in
benches/attention.rs (B * N = 16k, H = 16, D = 64, N in {1k, 2k, 4k}), forward and backward timed
with CUDA events (median of runs after warm-up), f32 and bf16, printed as a
markdown table. Run by scripts/gpu-check.sh; needs only torch and a GPU."""
import statistics
import sys

import torch
import torch.nn.functional as F


def time_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    quick = "--quick" in sys.argv
    warmup, runs = (2, 5) if quick else (3, 10)
    if not torch.cuda.is_available():
        print("sdpa_bench: torch sees no GPU", file=sys.stderr)
        sys.exit(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    print("| N | B | dtype | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    h, d = 16, 64
    for n in (1024, 2048, 4096):
        b = 16 * 1024 // n
        flops = 4.0 * b * h * n * n * d
        for dtype in (torch.float32, torch.bfloat16):
            shape = (b, h, n, d)
            q, k, v = (
                torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
                for _ in range(3)
            )
            g = torch.randn(shape, device="cuda", dtype=dtype)
            fwd = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), warmup, runs)
            out = F.scaled_dot_product_attention(q, k, v)

            def bwd():
                torch.autograd.grad(out, (q, k, v), g, retain_graph=True)

            bwd_ms = time_ms(bwd, warmup, runs)
            name = str(dtype).replace("torch.", "")
            print(
                f"| {n} | {b} | {name} | {fwd:.3f} | {flops / (fwd * 1e9):.1f} "
                f"| {bwd_ms:.3f} | {2.5 * flops / (bwd_ms * 1e9):.1f} |"
            )
            del q, k, v, g, out
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
