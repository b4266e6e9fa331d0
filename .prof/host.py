import torch, time, cProfile, pstats, sys
from kalman_optim import KalmanAdam, KalmanLAMB, cuda_graphs
from kalman_optim import fused as F
F.GRAPH_DEVICES = ("cpu",)
class G:
    def __init__(self, call): self.call = call
    def replay(self): pass   # host cost only
cuda_graphs._record = G
res = {}
for name in ["adam+VA", "fitted", "innovation", "adaptive", "transport"]:
    ps = [torch.nn.Parameter(torch.randn(1000)) for _ in range(10)]
    for p in ps: p.grad = torch.randn_like(p)
    kw = dict(noise="adam", variance_adaptation=True) if name == "adam+VA" else dict(noise=name)
    opt = KalmanAdam(ps, fused=True, **kw)
    for _ in range(10): opt.step()
    t = time.perf_counter()
    for _ in range(200): opt.step()
    print(name, "host us/step", round((time.perf_counter() - t) / 200 * 1e6, 1), flush=True)
    if name == sys.argv[1]:
        pr = cProfile.Profile(); pr.enable()
        for _ in range(200): opt.step()
        pr.disable(); pstats.Stats(pr).sort_stats("tottime").print_stats(18)
