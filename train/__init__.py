"""Training on encrypted shards (installed as ``himr_pipe.train``).

``models``: PEViT (RS), MI-ViT (MI) and a plain ViT baseline, registered with
timm; ``augment``: augmentation in the encrypted domain; ``loader``: streaming
WebDataset loaders; ``trainer``: the training loop behind ``himr-pipe train``;
``predict``: a trained model on plain images (``himr-pipe predict``).
"""
