"""Judging encoders on labelled images: features, kNN, linear probe, the protocols."""
