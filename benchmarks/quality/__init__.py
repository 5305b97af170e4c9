"""Inputs of the quality benchmark: BBC News and Twitter NER in the trainer's own file formats."""
