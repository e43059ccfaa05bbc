"""Training: arguments, the thin Trainer, listwise data and collators, objectives and their losses."""
