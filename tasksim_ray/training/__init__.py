"""One training loop and what runs on it: per-task pretraining, fine-tuning strategies and
objectives, budgeted multi-task pretraining (in-process or on Ray Train)."""
