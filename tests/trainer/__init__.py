"""Tests that run the real trainer: DeepSpeed on 2 CPU ranks (markers trainer, slow)."""
