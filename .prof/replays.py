import torch
from kalman_optim import KalmanAdam, KalmanLAMB, cuda_graphs
from kalman_optim import fused as F
F.GRAPH_DEVICES = ("cpu",)
class G:
    def __init__(self, call): self.call = call
    def replay(self): self.call()
cuda_graphs._record = G
for name, make in [("fitted", lambda ps: KalmanAdam(ps, noise="fitted", fused=True)),
                   ("innovation", lambda ps: KalmanAdam(ps, noise="innovation", fused=True)),
                   ("adaptive", lambda ps: KalmanAdam(ps, noise="adaptive", fused=True)),
                   ("transport", lambda ps: KalmanAdam(ps, noise="transport", fused=True)),
                   ("extrapolated", lambda ps: KalmanAdam(ps, noise="extrapolated", fused=True)),
                   ("lamb", lambda ps: KalmanLAMB(ps, fused=True)),
                   ("lamb exact", lambda ps: KalmanLAMB(ps, fused=True, precision_mean="current"))]:
    ps = [torch.nn.Parameter(torch.randn(20000)) for _ in range(3)]
    for p in ps: p.grad = torch.randn_like(p)
    opt = make(ps)
    for _ in range(8): opt.step()
    c = opt._kernel_cache(opt.param_groups[0])
    print(name, "replays", c.graphs.replays, "rec", c.graphs.recordings, "entries", len(c.graphs.entries), c.graphs.disabled_reason)
