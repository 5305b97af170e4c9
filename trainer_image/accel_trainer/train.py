"""The training recipe every rank runs: setup, train, finish. Read it top to bottom.

Launch (the launcher starts one of these per local rank; see :mod:`accel_trainer.launch`)::

    python -m accel_trainer run --config trainer.json --nproc 2          # a laptop, 2 ranks
    python -m accel_trainer run --config /etc/acceltrain/trainer.json    # in a pod

Setup: read and check the data (before the process group, so bad data fails every rank alike),
join the process group, pick the checkpoint to resume from, get the tokenizer and encode the
data, check that the model states and activations fit one rank's memory (exit 67 if not; see
:mod:`accel_trainer.memoryfit`), build the model and let DeepSpeed build the engine, optimizer
and scheduler from ``ds_config.json``, restore the checkpoint, start the metrics exporter.

Train: for each optimizer step, ``gradient_accumulation_steps`` micro-batches of forward and
backward, the engine step, then the pruning masks; metrics after every step, a log line every
``training.logEvery`` steps, evaluation every ``training.evalEvery``, a checkpoint every
``checkpoint.everySteps``. After each step the ranks agree whether any of them got SIGTERM; if
so, all save a checkpoint and exit 76.

Finish: final checkpoint and evaluation, then the exported model and its report, and a summary
line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as torch_dist

from accel_contract.config import ExitCode, TrainerConfig
from accel_trainer import evaluate, export, memoryfit, tokenization
from accel_trainer.checkpoint import TOKENIZER_DIR, CheckpointStore, TrainState
from accel_trainer.data import (
    Corpus,
    DataPosition,
    Examples,
    ShardedOrder,
    TokenCount,
    TokenizedSplit,
    load_corpus,
    tokenize,
)
from accel_trainer.errors import OutOfMemoryError, TrainerError
from accel_trainer.metrics import TrainerMetrics
from accel_trainer.models import ModelShape, build_model, model_shape
from accel_trainer.owntime import OwnWorkClock
from accel_trainer.pruning import Pruner
from accel_trainer.runconfig import (
    load_deepspeed_config,
    micro_batch_of,
    precision_of,
    resolve_deepspeed_config,
    validate,
    zero_stage_of,
)
from accel_trainer.weights import MasterWeights

LOG_PREFIX = "accel-trainer"
# Steps left out of the summary throughput: the first ones pay for lazy initialisation.
WARMUP_STEPS = 2


class Preempted(TrainerError):
    """SIGTERM (or SIGINT) arrived; every rank saved a checkpoint (retryable)."""

    exit_code = ExitCode.PREEMPTED


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job, from the env torch's launcher sets."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int

    @classmethod
    def from_env(cls) -> RankInfo:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
            node_rank=int(os.environ.get("GROUP_RANK", "0")),
        )


class StopRequest:
    """Remembers a SIGTERM/SIGINT; the loop finishes its step and stops at the next check."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class StopAgreement:
    """Lets the ranks agree, without stalling a step, that one of them was asked to stop.

    After each step a rank starts an asynchronous MAX all-reduce of its flag, on a gloo group of
    its own, and reads the result of the previous step's exchange: the ranks stop together one
    step after the signal, and the exchange overlaps the next step's compute (a blocking one
    cost ~0.4% of a step on two CPU ranks).
    """

    def __init__(self, request: StopRequest) -> None:
        self.request = request
        # Every rank is a member, so this is a process group (not the non-member marker).
        self.group: Any = torch_dist.new_group(backend="gloo")
        self.pending: tuple[Any, torch.Tensor] | None = None

    def after_step(self) -> bool:
        """True on every rank at the same step once any rank was asked to stop."""
        agreed = False
        if self.pending is not None:
            work, flag = self.pending
            work.wait()
            agreed = bool(flag.item() > 0)
            self.pending = None
        if not agreed:
            flag = torch.tensor([1.0 if self.request.requested else 0.0])
            work = torch_dist.all_reduce(
                flag, op=torch_dist.ReduceOp.MAX, group=self.group, async_op=True
            )
            self.pending = (work, flag)
        return agreed

    def drain(self) -> None:
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None


def log(info: RankInfo, message: str) -> None:
    if info.rank == 0:
        print(f"{LOG_PREFIX}: {message}", flush=True)


class Recipe:
    """One rank's run; :meth:`run` is the whole recipe."""

    # What :meth:`setup` builds, in its order.
    ds_config: dict[str, Any]
    precision: str
    micro_batch: int
    accumulation: int
    stop_agreement: StopAgreement
    store: CheckpointStore
    resume_from: Path | None
    """The checkpoint every rank agreed to resume from (None: a fresh start)."""
    tokenizer: Any
    label_names: list[str]
    train_split: TokenizedSplit
    eval_split: TokenizedSplit | None
    test_split: TokenizedSplit | None
    order: ShardedOrder
    total_steps: int
    memory: memoryfit.MemoryEstimate
    shape: ModelShape
    resolved_ds_config: dict[str, Any]
    """The DeepSpeed config as the engine got it (batch sizes and defaults filled in)."""
    engine: Any
    weights: MasterWeights
    pruner: Pruner | None
    state: TrainState
    evaluator: evaluate.Evaluator | None
    test_evaluator: evaluate.Evaluator | None
    metrics: TrainerMetrics

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.info = RankInfo.from_env()
        self.stop = StopRequest()
        self.device = torch.device("cpu")
        self.own_work = OwnWorkClock(self.device)
        self.eval_seconds = 0.0
        self.checkpoint_seconds = 0.0
        # Throughput bookkeeping for the summary line (steps after the warm-up ones).
        self.steady_start: float | None = None
        self.paused_before_steady = 0.0
        self.steady_steps = 0
        self.steady_tokens = TokenCount()
        self.step_seconds_total = 0.0
        self.last_loss = float("nan")
        self.sparsity: float | None = None
        self.last_saved = -1
        self.train_seconds = 0.0
        self.last_eval: dict[str, Any] | None = None

    # =============================================================================================
    def run(self) -> int:
        self.setup()
        self.train()
        self.finish()
        return 0

    # --- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        config, info = self.config, self.info
        self.stop.install()
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        self.ds_config = load_deepspeed_config(config.deepspeed_config)
        validate(config, self.ds_config, info.world_size)
        self.precision = precision_of(self.ds_config)
        self.micro_batch, self.accumulation = micro_batch_of(self.ds_config, config)

        corpus = load_corpus(config.data, config.model, config.training.seed)

        self._join_process_group()
        self.stop_agreement = StopAgreement(self.stop)
        self.store = CheckpointStore(config.checkpoint.dir, config.checkpoint.keep)
        self.resume_from = self._agree(self.store.latest() if config.checkpoint.resume else None)

        self._tokenize(corpus)
        self.total_steps = self._total_steps()

        self.memory = self._check_memory_fit()
        model = build_model(
            config.model,
            self.tokenizer,
            self.label_names,
            seed=config.training.seed,
            activation_checkpointing=config.activation_checkpointing,
        )
        self.shape = model_shape(model)
        # Same weights on every rank above; different dropout streams from here on.
        torch.manual_seed(config.training.seed + info.rank)
        self.engine = self._engine(model)
        self.weights = MasterWeights(self.engine)
        self.pruner = Pruner(config.pruning, self.engine, self.weights) if config.pruning else None
        self.state = self._restore()
        self.evaluator = self._evaluator(self.eval_split, info.world_size, info.rank, self.device)
        self.test_evaluator = self._evaluator(
            self.test_split, info.world_size, info.rank, self.device
        )
        self.metrics = self._metrics()
        resumed = f", resumed from {self.resume_from.name}" if self.resume_from else ""
        log(
            info,
            f"ready: {info.world_size} ranks, ZeRO-{zero_stage_of(self.ds_config)} "
            f"{self.precision}, {self.shape.num_params:,} parameters, "
            f"{len(self.train_split)} training / {len(self.eval_split or [])} eval examples, "
            f"{self.total_steps} steps{resumed}",
        )

    def _tokenize(self, corpus: Corpus) -> None:
        """The tokenizer, the tokenized splits and this rank's order of the training examples."""
        config, info = self.config, self.info
        self.tokenizer = self._tokenizer(corpus.training_texts())
        self.label_names = corpus.label_names
        data, task = config.data, config.model.task

        def encoded(examples: Examples) -> TokenizedSplit:
            return tokenize(examples, task, self.tokenizer, data.max_length, data.batching.padding)

        self.train_split = encoded(corpus.train)
        self.eval_split = encoded(corpus.eval) if corpus.eval is not None else None
        self.test_split = encoded(corpus.test) if corpus.test is not None else None
        self.order = ShardedOrder(
            len(self.train_split),
            self.micro_batch,
            info.world_size,
            info.rank,
            config.training.seed,
            lengths=self.train_split.lengths if data.batching.group_by_length else None,
        )

    def _join_process_group(self) -> None:
        import deepspeed

        if self.config.device == "cuda":
            torch.cuda.set_device(self.info.local_rank)
            self.device = torch.device("cuda", self.info.local_rank)
            self.own_work = OwnWorkClock(self.device)
        backend = "nccl" if self.config.device == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)

    def _agree(self, path: Path | None) -> Path | None:
        """Rank 0's choice of checkpoint, for every rank (they could race a concurrent save)."""
        choice: list[str | None] = [str(path) if path else None]
        torch_dist.broadcast_object_list(choice, src=0)
        return Path(choice[0]) if choice[0] else None

    def _tokenizer(self, texts: Any) -> Any:
        config = self.config
        max_length = config.data.max_length
        saved: Path | None = None
        if self.resume_from is not None:
            # Rank 0's view of the folder decides: a rank that saw it differently (a lagging
            # shared filesystem) would otherwise skip the broadcast below that its peers enter.
            candidate = self.resume_from / TOKENIZER_DIR
            saved = self._agree(candidate if candidate.is_dir() else None)
        if saved is not None:
            if config.model.config is not None:
                return tokenization.from_serialized(
                    tokenization.serialized_from_dir(saved), max_length
                )
            return tokenization.load_pretrained(str(saved), config.model.task, max_length)
        source = tokenization.tokenizer_source(config.model)
        if source is not None:
            return tokenization.load_pretrained(source, config.model.task, max_length)
        # Trained once on rank 0 and sent to the others: one vocabulary for every rank.
        serialized: list[str | None] = [None]
        if self.info.rank == 0:
            architecture = config.model.config
            vocab_size = (architecture.vocab_size if architecture else None) or (
                tokenization.DEFAULT_VOCAB_SIZE
            )
            serialized[0] = tokenization.train_wordpiece(texts, vocab_size)
        torch_dist.broadcast_object_list(serialized, src=0)
        assert serialized[0] is not None
        return tokenization.from_serialized(serialized[0], max_length)

    def _total_steps(self) -> int:
        training = self.config.training
        if training.max_steps is not None:
            return training.max_steps
        assert training.epochs is not None  # TrainingSpec guarantees one of them
        return max(1, training.epochs * self.order.micro_steps_per_epoch // self.accumulation)

    def _check_memory_fit(self) -> memoryfit.MemoryEstimate:
        """Refuse (exit 67) a run whose model states and activations cannot fit one rank's
        memory, before the model is built; when any rank does not fit, every rank refuses with
        the first such rank's message, so no rank is left waiting in DeepSpeed's collectives."""
        config, info = self.config, self.info
        shape = memoryfit.count_parameters(config, self.tokenizer, self.label_names)
        setup = memoryfit.setup_for(
            config,
            self.ds_config,
            shape,
            world_size=info.world_size,
            seq_length=self.train_split.seq_length,
        )
        budget = memoryfit.memory_budget(
            config.device, local_rank=info.local_rank, local_world_size=info.local_world_size
        )
        estimate = memoryfit.estimate(setup, budget)
        log(info, estimate.describe())
        refusals: list[str | None] = [None] * info.world_size
        torch_dist.all_gather_object(
            refusals, None if estimate.fits else estimate.failure_message()
        )
        refusal = next((message for message in refusals if message is not None), None)
        if refusal is not None:
            raise OutOfMemoryError(refusal)
        return estimate

    def _engine(self, model: Any) -> Any:
        import deepspeed
        from deepspeed.utils import logger as ds_logger

        self.resolved_ds_config = resolve_deepspeed_config(
            self.ds_config,
            self.config,
            world_size=self.info.world_size,
            total_steps=self.total_steps,
        )
        # DeepSpeed prints its whole config at INFO while it starts; keep its step lines later.
        level = ds_logger.level
        ds_logger.setLevel(logging.WARNING)
        try:
            engine, _, _, _ = deepspeed.initialize(
                model=model,
                model_parameters=[p for p in model.parameters() if p.requires_grad],
                config=self.resolved_ds_config,
                dist_init_required=False,
            )
        finally:
            ds_logger.setLevel(level)
        engine.train()
        return engine

    def _restore(self) -> TrainState:
        info = self.info
        if self.resume_from is None:
            return TrainState(
                world_size=info.world_size,
                zero_stage=zero_stage_of(self.ds_config),
                micro_batch=self.micro_batch,
            )
        state = self.store.load(
            self.engine, self.resume_from, rank=info.rank, world_size=info.world_size
        )
        if self.pruner is not None:
            saved = CheckpointStore.pruning_state(self.resume_from)
            if saved is not None:
                self.pruner.load_state_dict(saved)
        # Continue with the next unseen micro-batch, whatever world size wrote the checkpoint.
        state.micro_steps = self.order.micro_step_of(
            DataPosition(state.epoch, state.samples_into_epoch)
        )
        state.world_size = info.world_size
        state.micro_batch = self.micro_batch
        return state

    def _evaluator(
        self, split: TokenizedSplit | None, world_size: int, rank: int, device: torch.device
    ) -> evaluate.Evaluator | None:
        if split is None or len(split) == 0:
            return None
        return evaluate.Evaluator(
            self.config.model.task,
            split,
            self.label_names,
            batch_size=self.micro_batch,
            world_size=world_size,
            rank=rank,
            device=device,
        )

    def _metrics(self) -> TrainerMetrics:
        config, info = self.config, self.info
        metrics = TrainerMetrics(
            job=config.job.name,
            node_rank=info.node_rank,
            rank=info.rank,
        )
        budget = self.memory.budget
        metrics.record_memory_estimate(
            device_bytes=self.memory.device_total,
            host_bytes=self.memory.host_total,
            budget_bytes=budget.bytes if budget is not None else None,
        )
        port = config.metrics.port + info.local_rank
        try:
            metrics.serve(port)
        except OSError as error:
            print(
                f"{LOG_PREFIX}: rank {info.rank}: metrics port {port} unavailable ({error}); "
                "training continues without an exporter on this rank",
                flush=True,
            )
        device_name = (
            torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        )
        metrics.set_model_flops(
            num_params=self.shape.num_params,
            num_layers=self.shape.num_layers,
            hidden_size=self.shape.hidden_size,
            # Each real token attends over its own sentence, not over the padding.
            seq_length=max(1, round(self.train_split.mean_length)),
            device_name=device_name,
            precision=self.precision,
            peak_tflops=config.metrics.peak_tflops,
        )
        return metrics

    # --- train -----------------------------------------------------------------------------------
    def train(self) -> None:
        config, info, state = self.config, self.info, self.state
        training = config.training
        samples_per_rank_step = self.micro_batch * self.accumulation
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        window_tokens = TokenCount()
        steady_from = state.step + WARMUP_STEPS
        self.last_saved = state.step if self.resume_from else -1

        while state.step < self.total_steps:
            if state.step == steady_from:
                self.steady_start = time.perf_counter()
                self.paused_before_steady = self.eval_seconds + self.checkpoint_seconds
            started = time.perf_counter()
            loss, tokens = self._optimizer_step()
            state.step += 1
            if self.pruner is not None:
                self.pruner.after_optimizer_step(state.step)
            step_seconds = time.perf_counter() - started
            self.step_seconds_total += step_seconds
            if self.steady_start is not None:
                self.steady_steps += 1
                self.steady_tokens += tokens

            position = self.order.position_after(state.micro_steps)
            state.epoch, state.samples_into_epoch = position.epoch, position.samples_into_epoch
            state.samples_seen += samples_per_rank_step * info.world_size
            window_loss += loss
            window_steps += 1
            window_tokens += tokens

            log_now = state.step % training.log_every == 0 or state.step == self.total_steps
            if log_now and self.pruner is not None:
                self.sparsity = self.pruner.report().measured
            self.metrics.record_step(
                step=state.step,
                samples=samples_per_rank_step,
                tokens=tokens.real,
                padded_tokens=tokens.padded,
                step_seconds=step_seconds,
                own_seconds=self.own_work.take(),
                loss=loss,
                learning_rate=self._learning_rate(),
                loss_scale=self._loss_scale(),
                sparsity=self.sparsity,
            )
            if log_now:
                self._log_window(
                    window_loss / window_steps, window_steps, window_tokens, window_start
                )
                self.metrics.record_device_memory()
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                window_tokens = TokenCount()

            self._evaluate_save_or_stop()
        self.stop_agreement.drain()
        if self.steady_start is not None:
            paused = self.eval_seconds + self.checkpoint_seconds - self.paused_before_steady
            self.train_seconds = time.perf_counter() - self.steady_start - paused

    def _evaluate_save_or_stop(self) -> None:
        """After a step: evaluate and save a checkpoint when due; a stop every rank agreed on
        saves one and ends the run (Preempted)."""
        config, state = self.config, self.state
        stop = self.stop_agreement.after_step()
        eval_every = config.training.eval_every
        if eval_every and state.step % eval_every == 0 and not stop:
            self.run_evaluation(f"step-{state.step:08d}")
        every = config.checkpoint.every_steps
        if stop or (every and state.step % every == 0):
            self.save_checkpoint()
            self.last_saved = state.step
        if stop:
            raise Preempted(
                f"stopped by {self.stop.signal_name or 'a peer'}: checkpoint of step "
                f"{state.step} saved in {self.store.root}; a restart resumes from it"
            )

    def _optimizer_step(self) -> tuple[float, TokenCount]:
        """One optimizer step: gradient_accumulation micro-batches; returns the mean loss and
        the tokens this rank processed."""
        engine, state, clock = self.engine, self.state, self.own_work
        total = 0.0
        tokens = TokenCount()
        for _ in range(self.accumulation):
            with clock.loading():
                batch = self.train_split.batch(self.order.indices(state.micro_steps), self.device)
            with clock.forward():
                loss = engine(**batch.tensors).loss
            engine.backward(loss)
            engine.step()
            total += float(loss.detach())
            tokens += batch.tokens
            state.micro_steps += 1
        return total / self.accumulation, tokens

    def _learning_rate(self) -> float:
        rates = self.engine.get_lr()
        return float(rates[0]) if rates else 0.0

    def _loss_scale(self) -> float | None:
        if self.precision != "fp16":
            return None
        optimizer = self.engine.optimizer
        scale = getattr(optimizer, "cur_scale", None) or getattr(optimizer, "loss_scale", None)
        return float(scale) if scale is not None else None

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self._reduce_device())
        torch_dist.all_reduce(tensor)
        return [float(value) for value in tensor.tolist()]

    def _reduce_device(self) -> torch.device:
        return self.device

    def _log_window(self, loss: float, steps: int, tokens: TokenCount, start: float) -> None:
        """The log line of the steps since the last one, with the whole job's samples/s and
        real tokens/s; also counts the window's real tokens into the run's total."""
        info, state = self.info, self.state
        seconds = time.perf_counter() - start
        loss_sum, real, padded = self._sum_over_ranks([loss, tokens.real, tokens.padded])
        self.last_loss = loss_sum / info.world_size
        state.tokens_seen += int(real)
        global_samples = steps * self.micro_batch * self.accumulation * info.world_size
        samples_per_second = global_samples / seconds if seconds > 0 else 0.0
        tokens_per_second = real / seconds if seconds > 0 else 0.0
        efficiency = real / padded if padded else 0.0
        sparsity = f"{self.sparsity:.4f}" if self.sparsity is not None else "-"
        log(
            info,
            f"step {state.step}/{self.total_steps} loss {self.last_loss:.4f} "
            f"lr {self._learning_rate():.3e} samples/s {samples_per_second:.1f} "
            f"tokens/s {tokens_per_second:.0f} padding-efficiency {efficiency:.3f} "
            f"sparsity {sparsity} epoch {state.epoch}",
        )

    # --- evaluation and checkpoints --------------------------------------------------------------
    def run_evaluation(
        self, name: str, evaluator: evaluate.Evaluator | None = None
    ) -> dict[str, Any] | None:
        """Scores of the evaluation split (or of ``evaluator``'s, the test split), written to
        eval/<name>.json by rank 0."""
        scoring = evaluator or self.evaluator
        if scoring is None:
            return None
        started = time.perf_counter()
        engine = self.engine
        engine.eval()

        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            logits: torch.Tensor = engine(**batch).logits
            return logits

        try:
            result = scoring.evaluate(forward)
        finally:
            engine.train()
        result["step"] = self.state.step
        if scoring is self.evaluator:
            self.last_eval = result
        if self.info.rank == 0:
            directory = Path(self.config.resolved_output_dir()) / "eval"
            evaluate.write_report(result, directory, name)
            split = "eval" if scoring is self.evaluator else "test"
            log(self.info, f"{split} step {self.state.step}: {evaluate.headline(result)}")
        self.eval_seconds += time.perf_counter() - started
        return result

    def save_checkpoint(self) -> None:
        started = time.perf_counter()
        files = {
            "trainer.json": self.config.to_json(),
            "ds_config.json": _json(self.resolved_ds_config),
        }
        path = self.store.save(
            self.engine,
            self.state,
            rank=self.info.rank,
            files=files,
            tokenizer=self.tokenizer,
            pruning_state=self.pruner.state_dict() if self.pruner else None,
        )
        seconds = time.perf_counter() - started
        self.checkpoint_seconds += seconds
        self.metrics.record_checkpoint(seconds, step=self.state.step)
        log(self.info, f"checkpoint {path} saved in {seconds:.2f}s")

    # --- finish ----------------------------------------------------------------------------------
    def finish(self) -> None:
        config, info, state = self.config, self.info, self.state
        if self.last_saved != state.step:
            self.save_checkpoint()
        final = self.last_eval
        if final is not None and final["step"] == state.step:
            if info.rank == 0:
                directory = Path(config.resolved_output_dir()) / "eval"
                evaluate.write_report(final, directory, "final")
        else:
            final = self.run_evaluation("final")
        if final is not None and "report" in final:
            log(info, "final evaluation report:\n" + final["report"])
        tested = self.run_evaluation("test", self.test_evaluator) if self.test_evaluator else None
        if tested is not None and "report" in tested:
            log(info, "test report:\n" + tested["report"])
        output_dir = Path(config.resolved_output_dir())
        export_evaluator = self._evaluator(self.eval_split, 1, 0, torch.device("cpu"))
        report = export.export_model(
            engine=self.engine,
            weights=self.weights,
            pruner=self.pruner,
            tokenizer=self.tokenizer,
            output_dir=output_dir,
            rank=info.rank,
            quantize=config.export.quantize,
            evaluator=export_evaluator,
        )
        if report is not None:
            log(info, f"exported {report['model_dir']} ({report['size_bytes']:,} bytes)")
            quantized = report.get("quantized")
            if quantized:
                log(info, f"exported {quantized['model_dir']} ({quantized['size_bytes']:,} bytes)")
        log(info, self.summary())
        torch_dist.barrier()
        torch_dist.destroy_process_group()

    def summary(self) -> str:
        """The final log line: progress and steady-state throughput, including the loop's own
        per-step work (metrics, logging, the stop check) but not evaluation or checkpoints.
        Collective: every rank calls it (the token counts are summed over ranks)."""
        state, info = self.state, self.info
        global_batch = self.micro_batch * self.accumulation * info.world_size
        real, padded = self._sum_over_ranks([self.steady_tokens.real, self.steady_tokens.padded])
        samples_per_second = tokens_per_second = 0.0
        if self.train_seconds > 0:
            samples_per_second = self.steady_steps * global_batch / self.train_seconds
            tokens_per_second = real / self.train_seconds
        mask_ratio = (
            self.pruner.mask_seconds / self.step_seconds_total
            if self.pruner and self.step_seconds_total
            else 0.0
        )
        sparsity = f"{self.sparsity:.4f}" if self.sparsity is not None else "-"
        efficiency = real / padded if padded else 0.0
        flops, peak = self.metrics.flops_per_token, self.metrics.peak_tflops
        tflops = (flops or 0.0) * tokens_per_second / info.world_size / 1e12
        mfu = tflops / peak if peak else 0.0
        return (
            f"done: step={state.step} loss={self.last_loss:.4f} "
            f"samples_per_second={samples_per_second:.1f} "
            f"tokens_per_second={tokens_per_second:.0f} "
            f"padding_efficiency={efficiency:.4f} "
            f"tflops_per_device={tflops:.4g} mfu={mfu:.4f} "
            f"sparsity={sparsity} mask_time_ratio={mask_ratio:.4f} "
            f"samples_seen={state.samples_seen} tokens_seen={state.tokens_seen}"
        )


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def run(config: TrainerConfig) -> int:
    """Run this rank's part of the training; raises a TrainerError (or worse) on failure."""
    return Recipe(config).run()
