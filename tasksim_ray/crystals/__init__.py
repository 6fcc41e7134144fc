"""Crystal tasks: dataset loaders, CGCNN crystal graphs and the published CGCNN checkpoints."""
