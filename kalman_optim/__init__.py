"""kalman_optim: Adam and LAMB with Kalman filters in place of their moving averages."""

from kalman_optim.kalman_adam import KalmanAdam
from kalman_optim.kalman_lamb import KalmanLAMB
from kalman_optim.closed_forms import (
    adam_gain,
    adam_process_noise,
    beta_to_noise_ratio,
    constant_noise_gain,
    noise_ratio_to_beta,
    steady_state_gain,
)

__version__ = "0.1.0"

__all__ = [
    "KalmanAdam",
    "KalmanLAMB",
    "adam_gain",
    "adam_process_noise",
    "beta_to_noise_ratio",
    "constant_noise_gain",
    "noise_ratio_to_beta",
    "steady_state_gain",
    "__version__",
]
