"""`calib demo`: the whole calibration loop on real questions, end to end, on this machine."""
