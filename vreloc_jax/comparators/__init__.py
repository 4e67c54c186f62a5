"""The comparators of the paper's Table 4, in the same harness as the paper's model.

`cgbm` (Feng et al.'s own model; `tf_lstm`, the TF1 LSTM cell it uses), `sst`
(query-agnostic proposals), `video_level` (Feng et al.'s baseline); `candidates`, the
grid the last two score and their family; `losses`, their losses.
"""
