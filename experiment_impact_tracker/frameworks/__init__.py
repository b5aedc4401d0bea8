"""Callbacks that measure a training run in the frameworks researchers use: ``lightning`` (PyTorch Lightning),
``huggingface`` (transformers' Trainer) and ``keras`` (Keras 3). Each module imports its framework, so import the
one you use; importing experiment_impact_tracker imports none of them. ``common`` holds what they share.
"""
