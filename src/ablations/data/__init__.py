"""Datasets: fetch the original files safely (`sources`), parse their real formats
(`formats`), split and scale them (`prepare`)."""
