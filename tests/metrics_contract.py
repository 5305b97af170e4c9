"""The trainer's metrics contract as the tests read it: family name -> type, from the contract
package's table (which the README's metrics table must list too, see test_trainer_metrics)."""

from __future__ import annotations

from accel_contract.metrics import SERIES

# Family names as the text-format parser reports them (counters without "_total").
TRAINER_CONTRACT_FAMILIES = {series.name: series.kind for series in SERIES}
