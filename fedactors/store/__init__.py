"""Where runs are kept: checkpoints in Redis (checkpoint) and the embedded Redis a local run starts."""
