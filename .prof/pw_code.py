import torch
from kalman_optim import KalmanLAMB
torch.manual_seed(0)
ps = [torch.nn.Parameter(torch.randn(100000)) for _ in range(2)]
for p in ps: p.grad = torch.randn_like(p)
opt = KalmanLAMB(ps, lr=1e-3, weight_decay=1e-2, fused=True)
for _ in range(3): opt.step()
