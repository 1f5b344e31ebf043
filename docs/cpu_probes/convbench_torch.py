"""The same convs as convbench.py in PyTorch (2 threads), for the side-by-side table in docs/benchmarks.md.

Usage (torch venv): python docs/cpu_probes/convbench_torch.py [BATCH]
"""
import sys, time, json, torch, numpy as np
torch.set_num_threads(2)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 256
shapes = [(32, 3, 16, 3, 1), (32, 16, 16, 3, 1), (32, 16, 32, 3, 2), (32, 16, 32, 1, 2),
 (16, 32, 32, 3, 1), (16, 32, 64, 3, 2), (8, 64, 64, 3, 1), (8, 64, 128, 3, 2), (4, 128, 128, 3, 1)]
def timeit(f, n=5):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return 1000 * np.median(ts)
for H, ci, co, k, s in shapes:
    x = torch.randn(B, ci, H, H, requires_grad=True)
    conv = torch.nn.Conv2d(ci, co, k, s, k // 2, bias=False)
    with torch.no_grad(): y = conv(x)
    g = torch.ones_like(y)
    def fwd():
        with torch.no_grad(): conv(x)
    def dx():
        return torch.nn.grad.conv2d_input(x.shape, conv.weight, g, s, k // 2)
    def dw():
        return torch.nn.grad.conv2d_weight(x, conv.weight.shape, g, s, k // 2)
    print(json.dumps(dict(shape=[H, ci, co, k, s], fwd=round(timeit(fwd), 1), dx=round(timeit(dx), 1), dw=round(timeit(dw), 1))), flush=True)
