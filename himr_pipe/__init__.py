"""himr-pipe: encrypt image datasets into human-imperceptible, machine-recognizable shards."""

__version__ = "0.2.0"
