"""Datasets: fetch the original files safely (`sources`) and parse their real formats (`formats`).

    ablations download --dataset fashion_mnist     # -> data/raw/fashion_mnist/
"""
