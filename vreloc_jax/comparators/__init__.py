"""The comparators of the paper's Table 4, in the same harness: `cgbm` (Feng et al.'s own
model), `sst` (query-agnostic proposals), `video_level` (Feng et al.'s baseline); the
candidate grid the last two score, their family and their `losses`."""
