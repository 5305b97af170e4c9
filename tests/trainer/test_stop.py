"""SIGTERM handling inside a rank: the signal is remembered, and the ranks agree to stop at the
same step, one step after it arrived (the exchange overlaps the next step)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import torch.distributed as torch_dist

from accel_trainer.train import StopAgreement, StopRequest


@pytest.fixture
def single_rank_group() -> Iterator[None]:
    store = torch_dist.HashStore()
    torch_dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    torch_dist.destroy_process_group()


def test_sigterm_is_remembered_not_fatal() -> None:
    request = StopRequest()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    request.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)

        assert request.requested and request.signal_name == "SIGTERM"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_the_ranks_stop_one_step_after_the_request(single_rank_group: None) -> None:
    request = StopRequest()
    agreement = StopAgreement(request)

    before = [agreement.after_step(), agreement.after_step()]
    request.signal_name = "SIGTERM"
    during = agreement.after_step()  # the exchange started now is read at the next step
    after = agreement.after_step()
    agreement.drain()

    assert before == [False, False]
    assert (during, after) == (False, True)
