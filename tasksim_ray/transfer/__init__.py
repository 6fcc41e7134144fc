"""Transfer studies: learning-curve cells (scratch, fine-tuning, multi-task, mixture of experts) run
on Ray, planned per study, analysed (AUC, gain, similarity vs gain) and reported."""
