"""Enrollment: putting speakers' genuine samples and known clones into the store,
dataset importers, and (as they land) calibration, evaluation and cloning."""
