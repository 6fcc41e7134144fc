"""Search for the best recipe (pretraining subset, budget split, fine-tuning) with Ray Tune + Optuna."""
