"""The trainer's metrics contract (the README's metrics table), for the tests."""

from __future__ import annotations

# Family names as the text-format parser reports them (counters without "_total").
TRAINER_CONTRACT_FAMILIES = {
    "acceltrain_train_samples": "counter",
    "acceltrain_train_tokens": "counter",
    "acceltrain_train_processed_tokens": "counter",
    "acceltrain_optimizer_steps": "counter",
    "acceltrain_step": "gauge",
    "acceltrain_samples_per_second": "gauge",
    "acceltrain_tokens_per_second": "gauge",
    "acceltrain_padding_efficiency_ratio": "gauge",
    "acceltrain_tflops_per_device": "gauge",
    "acceltrain_mfu_ratio": "gauge",
    "acceltrain_loss": "gauge",
    "acceltrain_learning_rate": "gauge",
    "acceltrain_sparsity_ratio": "gauge",
    "acceltrain_loss_scale": "gauge",
    "acceltrain_device_memory_bytes": "gauge",
    "acceltrain_estimated_memory_bytes": "gauge",
    "acceltrain_memory_budget_bytes": "gauge",
    "acceltrain_step_seconds": "histogram",
    "acceltrain_step_own_seconds": "gauge",
    "acceltrain_checkpoint_seconds": "histogram",
    "acceltrain_last_checkpoint_step": "gauge",
}
