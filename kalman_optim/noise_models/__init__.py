"""One module per noise model of the moment filters: its extra state, its per-step statistics and its
posterior read-out, as pure functions (the optimizers' step and read-out dispatch on the mode's name).

=============  ====================================================  ===============  ===========================
mode           first moment (gain schedule)                          state / fp32 par  interval calibrated?
=============  ====================================================  ===============  ===========================
"adam"         Adam's EWMA = diffuse-prior filter (D2)                8 B              no: zero-memory r (D3)
"constant"     constant noise ratio lambda(beta1), Riccati gain (D1)  8 B              no: zero-memory r (D3)
"adaptive"     per-coordinate ratio from differences (D4)             24 B             no: decays in training (E1/E2)
"innovation"   Adam's EWMA; uncertainty from its innovations (D7)     12 B (+O(1)/tensor)  yes: see E1/E2
"transport"    Adam's gain, prediction moved by h_hat * dtheta (D8)   24 B             no interval (no noise statistic)
=============  ====================================================  ===============  ===========================
"""

from kalman_optim.noise_models import innovation, transport

#: mode -> bytes of optimizer state per fp32 parameter (documented in the optimizers' docstrings; E5 measures it).
STATE_BYTES_PER_PARAM = {"adam": 8, "constant": 8, "adaptive": 24, "innovation": 12, "transport": 24}

#: mode -> names of the per-parameter state the mode keeps beside exp_avg and exp_avg_sq.
STATE_KEYS = {"adam": (), "constant": (), "adaptive": ("prev_grad", "prev_diff", "diff_sq_avg", "diff_lag_avg"),
              "innovation": innovation.STATE_KEYS, "transport": transport.STATE_KEYS}

__all__ = ["innovation", "transport", "STATE_BYTES_PER_PARAM", "STATE_KEYS"]
