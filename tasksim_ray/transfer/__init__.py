"""Transfer from pretraining tasks: fine-tuning objectives and pretraining-budget sampling."""
