"""The PyTorch "Training a Classifier" tutorial CNN: model, CIFAR-10 data, loops.

Nothing here knows about benchmarking; a user can train the tutorial model with it alone.
"""
