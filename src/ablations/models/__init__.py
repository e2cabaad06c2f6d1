"""Keras model builders: `blocks` (layers in a configurable order) and `zoo` (whole networks)."""
