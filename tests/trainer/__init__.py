"""Tests of the trainer (accel_trainer): its pieces, and real runs of DeepSpeed on 2 CPU ranks
(markers training, slow)."""
