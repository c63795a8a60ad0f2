"""Programs a learner runs from the command line, from the course root (``python -m scripts.<name>``):
the fine-tuning script. They import ``utils``; ``utils`` never imports them."""
