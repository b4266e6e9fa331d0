"""One module per noise model of the moment filters: its extra state, its per-step statistics and its
posterior read-out, as pure functions (the optimizers' step and read-out dispatch on the mode's name).

=============  ====================================================  ===============  ===========================
mode           first moment (gain schedule)                          state / fp32 par  interval calibrated?
=============  ====================================================  ===============  ===========================
"adam"         Adam's EWMA = diffuse-prior filter (D2)                8 B              no: zero-memory r (D3)
"constant"     constant noise ratio lambda(beta1), Riccati gain (D1)  8 B              no: zero-memory r (D3)
"adaptive"     per-coordinate ratio from differences (D4)             24 B             no: decays in training (E1/E2)
"innovation"   Adam's EWMA; uncertainty from its innovations (D7)     12 B (+O(1)/tensor)  yes: see E1/E2 (not the first ~50 steps at high drift, E7)
"fitted"       Adam's EWMA; innovations fitted by a local level (D7)  12 B (+O(1)/tensor)  yes: E7 from step 2 on; E2 as "innovation";
                                                                                         one coordinate near the ML oracle with noise_beta=0.999
"transport"    Adam's gain, prediction moved by h_hat * dtheta (D8)   24 B             no interval (no noise statistic)
"extrapolated" Adam's gain; gradient taken at an extrapolated point,  12 B             no interval (no noise statistic)
               so it carries h * dtheta exactly on a quadratic (D8;
               the parameter holds that point: optimizer.eval())
=============  ====================================================  ===============  ===========================
"""

from kalman_optim.noise_models import extrapolated, fitted, innovation, transport

#: mode -> bytes of optimizer state per fp32 parameter (documented in the optimizers' docstrings; E5 measures it).
STATE_BYTES_PER_PARAM = {"adam": 8, "constant": 8, "adaptive": 24, "innovation": 12, "fitted": 12, "transport": 24,
                         "extrapolated": 12}

#: mode -> names of the per-parameter state the mode keeps beside exp_avg and exp_avg_sq.
STATE_KEYS = {"adam": (), "constant": (), "adaptive": ("prev_grad", "prev_diff", "diff_sq_avg", "diff_lag_avg"),
              "innovation": innovation.STATE_KEYS, "fitted": fitted.STATE_KEYS, "transport": transport.STATE_KEYS, "extrapolated": extrapolated.STATE_KEYS}

#: mode -> module of the modes that read the uncertainty off Adam's innovations (same interface: init_state,
#: observe, observe_foreach, posterior_variance, degrees_of_freedom, STATE_KEYS).
INNOVATION_MODELS = {"innovation": innovation, "fitted": fitted}

__all__ = ["extrapolated", "fitted", "innovation", "transport", "INNOVATION_MODELS", "STATE_BYTES_PER_PARAM", "STATE_KEYS"]
