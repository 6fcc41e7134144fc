"""Tasks and where they come from: task tables, the source registry and its loaders (molecules,
crystal files), preprocessing (target filter, split, folds) and probe sets."""
